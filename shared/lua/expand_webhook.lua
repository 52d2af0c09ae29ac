-- Pops the oldest outbox entry, if it is still `expected`, and creates its deliveries, so an entry is
-- expanded exactly once. Returns 1 when expanded, 0 when another worker got to it first.
local outbox, due = KEYS[1], KEYS[2]  -- then one delivery hash per delivery
local expected, now = ARGV[1], ARGV[2]
local FIRST_DELIVERY = 3  -- per delivery: endpoint id, project, webhook id, body, delivery id

if redis.call('LINDEX', outbox, -1) ~= expected then return 0 end
redis.call('RPOP', outbox)
for i = FIRST_DELIVERY, #ARGV, 5 do
  local delivery = KEYS[2 + (i - FIRST_DELIVERY) / 5 + 1]
  redis.call('HSET', delivery, 'endpoint', ARGV[i], 'project', ARGV[i + 1], 'webhook_id', ARGV[i + 2],
             'body', ARGV[i + 3], 'attempts', 0, 'first_at', now)
  redis.call('ZADD', due, now, ARGV[i + 4])
end
return 1
