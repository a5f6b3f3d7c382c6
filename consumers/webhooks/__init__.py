"""Webhook delivery: each delivery reaches its organisation's webhook once, in order per person.

Two loops in one process (`python -m consumers.webhooks`):

- the intake (`app.IntakeSink`, the carebus.adapters.sink batch loop) reads the six
  `care.deliveries.<agency>.v1` topics and queues, in `webhook_queue`, every Delivery whose
  organisation has a webhook (the others read `GET /v1/deliveries` and are skipped), keyed by
  `delivery_id` so a delivery the router produced twice is queued once;
- the dispatcher (`dispatcher.Dispatcher`) sends the head of each (organisation, person) line
  when it is due, signed, and records 2xx, retries or dead letters (`protocol` has the rules).

Any number of these processes may run side by side: the consumer group splits the intake, and
row claims (`queue`) keep two dispatchers from sending one delivery at the same time.
"""
