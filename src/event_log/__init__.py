"""A reusable transactional outbox that ships events to ClickHouse exactly once.

Publishing API::

    from event_log import Event, publish

    class OrderPlaced(Event):
        order_id: int

    with transaction.atomic():
        order = Order.objects.create(...)
        publish(OrderPlaced(order_id=order.pk))
"""

from event_log.events import Event
from event_log.publisher import publish

__all__ = ["Event", "publish"]
