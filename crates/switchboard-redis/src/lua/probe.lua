-- The health probe, sent as a script so that it takes the path a publish
-- takes: a server that still loads its data answers PUBLISH but refuses
-- scripts, and a probe that got through while publishes are refused would
-- make /ready lie. KEYS[1] the probe's pub/sub name; ARGV[1] 'publish' or
-- 'spublish', ARGV[2] the envelope.
return redis.call(ARGV[1], KEYS[1], ARGV[2])
