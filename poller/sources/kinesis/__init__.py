"""The Kinesis source: shards read in order (:mod:`.source`, :mod:`.reader`), Lambda's Kinesis event
(:mod:`.event`) and the shard leases and checkpoints shared by replicas (:mod:`.leases`)."""
