"""Event-listener demo: follow the queue's state transitions live.

Prints ``READY`` once connected, then one line per transition
(``<entity_type> <entity_id> <old_state> -> <new_state>``) until N tasks (argv[1]) have
reached ``success`` or nothing happened for 60 s.
"""

import sys
import time

import labtasker

if __name__ == "__main__":
    wanted = int(sys.argv[1]) if len(sys.argv) > 1 else 1
    listener = labtasker.connect_events(timeout=10)
    print("READY", flush=True)
    done = set()
    quiet_until = time.monotonic() + 60
    try:
        while len(done) < wanted and time.monotonic() < quiet_until:
            response = listener.get_event(timeout=1)  # None: timeout or a keep-alive ping
            if response is None:
                continue
            quiet_until = time.monotonic() + 60
            event = response.event
            print(
                f"{event.entity_type} {event.entity_id} {event.old_state} -> {event.new_state}",
                flush=True,
            )
            if event.entity_type == "task" and event.new_state == "success":
                done.add(event.entity_id)
    finally:
        listener.stop()
    sys.exit(0 if len(done) >= wanted else 1)
