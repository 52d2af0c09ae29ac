-- Creates or updates one seeded API key. A secret already known keeps its id, counters and creation time;
-- only what the seed says changes. The caller read the digest's id (or chose a new one) and names that key's
-- record; if the digest now points elsewhere the reply is {0, id} and the caller asks again with that id.
local digests, record = KEYS[1], KEYS[2]
local digest, key_id, project, name, rpm, max_concurrent, now = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5],
  ARGV[6], ARGV[7]

local id = redis.call('HGET', digests, digest)
if id and id ~= key_id then return {0, id} end
if not id then
  redis.call('HSET', digests, digest, key_id)
  redis.call('HSET', record, 'id', key_id, 'digest', digest, 'created', now, 'requests', 0)
end
redis.call('HSET', record, 'project', project, 'name', name, 'rpm', rpm, 'max_concurrent', max_concurrent,
           'seeded', 1)
return {1, key_id}
