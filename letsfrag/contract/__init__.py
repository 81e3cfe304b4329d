"""What the processes agree on, pure and without I/O: the Redis key names (:mod:`.keys`), the message envelope
on the bus (:mod:`.envelope`), the Redis records (:mod:`.records`, :mod:`.handover`, :mod:`.reshard`) and the
exit and gateway close codes (:mod:`.exitcodes`), the operator's actions (:mod:`.actions`), the ops on the
supervisor-cluster pipe (:mod:`.ipc_ops`) and the host and broker states (:mod:`.states`). Everything here
imports only the standard library, :mod:`letsfrag.errors` and the rest of this package, so every role, tool and
test can read the same definitions."""
