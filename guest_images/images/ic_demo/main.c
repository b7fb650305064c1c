/*
 * ic_demo - the runtime's integration-service VSCs (include/ic.h) against hvkvm's heartbeat and
 * shutdown VSPs (hvkvm/vsp/ic.py).
 *
 * Connects to the VMBus, starts the heartbeat and shutdown ICs (whichever the host offers), then
 * idles in `sti; hlt` while the VMBus interrupt answers the host: the negotiation, heartbeats
 * (seq_num + 1), and finally a shutdown request, which is acknowledged (HV_S_OK) before the
 * image's hook reports it and calls hv_done(0).
 *
 * Command line: hook=report|default (report: SYNC 3 and a log line, then hv_done(0); default:
 *   the runtime's own hook, hv_done(0) after its log line) exit_beats=N (0: never; return 0 after
 *   N heartbeats were answered, without a shutdown)
 * SYNC 1 started:    ICs started, heartbeat relid, shutdown relid, VMBus version
 * SYNC 2 negotiated: heartbeat framework, heartbeat service, shutdown framework, shutdown service
 *                    (versions as major << 16 | minor; 0 for an IC the host does not offer)
 * SYNC 3 shutdown:   flags, reason_code, timeout_seconds, heartbeats answered, last seq_num sent
 */
#include "ic.h"

static void report_shutdown(const struct ic_shutdown_info *info)
{
	hv_log("ic_demo: %s requested: \"%s\" after %llu heartbeats",
	       info->flags & ICSHUTDOWN_FLAG_RESTART ? "restart" : "shutdown", info->message,
	       (unsigned long long)ic_heartbeat.requests);
	hv_sync(3, info->flags, info->reason_code, info->timeout_seconds, ic_heartbeat.requests,
		ic_heartbeat.last_seq);
	hv_done(0);
}

static bool negotiated(const struct ic_service *svc)
{
	return !svc->ch || svc->fw_version != 0;
}

int hv_main(void)
{
	char hook[16] = "report";
	uint64_t exit_beats = hv_arg_u64("exit_beats", 0);
	bool reported = false;
	int rc, started;

	hv_arg("hook", hook, sizeof(hook));
	HV_ASSERT(!strcmp(hook, "report") || !strcmp(hook, "default"),
		  "ic_demo: hook must be report or default, not '%s'", hook);
	if (!strcmp(hook, "report"))
		ic_shutdown_hook = report_shutdown;

	rc = vmbus_init(VMBUS_VECTOR_DEFAULT);
	HV_ASSERT(rc == 0, "ic_demo: VMBus init failed: %d (hypercall status 0x%llx)", rc,
		  (unsigned long long)vmbus_last_hv_status);
	started = ic_start_all();
	HV_ASSERT(started >= 0, "ic_demo: starting the ICs failed: %d (host status 0x%x)", started,
		  vmbus_last_host_status);
	hv_log("ic_demo: VMBus %u.%u, %u offer(s), %d IC(s) started (heartbeat relid %u, shutdown "
	       "relid %u)", vmbus_conn.version >> 16, vmbus_conn.version & 0xffff, vmbus_conn.offers,
	       started, ic_heartbeat.ch ? ic_heartbeat.ch->relid : 0,
	       ic_shutdown.ch ? ic_shutdown.ch->relid : 0);
	hv_sync(1, (uint64_t)started, ic_heartbeat.ch ? ic_heartbeat.ch->relid : 0,
		ic_shutdown.ch ? ic_shutdown.ch->relid : 0, vmbus_conn.version);

	/* Idle; the VMBus interrupt answers the host. */
	for (;;) {
		__asm__ volatile("sti; hlt; cli" ::: "memory");
		if (!reported && negotiated(&ic_heartbeat) && negotiated(&ic_shutdown)) {
			reported = true;
			hv_log("ic_demo: negotiated heartbeat %u.%u/%u.%u, shutdown %u.%u/%u.%u",
			       ic_heartbeat.fw_version >> 16, ic_heartbeat.fw_version & 0xffff,
			       ic_heartbeat.srv_version >> 16, ic_heartbeat.srv_version & 0xffff,
			       ic_shutdown.fw_version >> 16, ic_shutdown.fw_version & 0xffff,
			       ic_shutdown.srv_version >> 16, ic_shutdown.srv_version & 0xffff);
			hv_sync(2, ic_heartbeat.fw_version, ic_heartbeat.srv_version,
				ic_shutdown.fw_version, ic_shutdown.srv_version);
		}
		if (exit_beats && ic_heartbeat.requests >= exit_beats)
			break;
	}
	hv_log("ic_demo: %llu heartbeats answered (last seq_num %llu); leaving",
	       (unsigned long long)ic_heartbeat.requests, (unsigned long long)ic_heartbeat.last_seq);
	return 0;
}
