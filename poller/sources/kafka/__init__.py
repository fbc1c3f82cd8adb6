"""The Kafka source: a consumer group read with aiokafka (:mod:`.source`), the self-managed Kafka
event of AWS (:mod:`.event`) and the background committer of offsets (:mod:`.commits`)."""
