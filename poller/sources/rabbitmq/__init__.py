"""The RabbitMQ source: queues consumed with aio-pika (:mod:`.source`), the Amazon MQ event
(:mod:`.event`), acks and lanes (:mod:`.flow`) and retries through delay queues (:mod:`.delay_queues`)."""
