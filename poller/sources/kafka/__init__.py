"""The Kafka source: a consumer group read with aiokafka (:mod:`.source`), the self-managed Kafka
event of AWS (:mod:`.event`), the background committer of offsets (:mod:`.commits`) and aiokafka's
parsed records handed over without a ConsumerRecord each (:mod:`.fetched`)."""
