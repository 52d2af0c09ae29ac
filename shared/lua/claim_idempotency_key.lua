-- Claims an Idempotency-Key for a new object, or finds the one an earlier request with the key created.
-- Returns {'fresh'|'replay'|'pending', id} or {'conflict', ''}.
local claim_key = KEYS[1]
local fingerprint, new_id, stale_ms, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]

local now = now_ms()
local raw = redis.call('GET', claim_key)
if raw then
  local claim = cjson.decode(raw)
  if claim['fingerprint'] ~= fingerprint then return {'conflict', ''} end
  if claim['state'] == 'accepted' then return {'replay', claim['id']} end
  if now - tonumber(claim['at']) < stale_ms then return {'pending', claim['id']} end
end
redis.call('SET', claim_key, cjson.encode({fingerprint = fingerprint, id = new_id, state = 'pending', at = now}),
           'EX', ttl)
return {'fresh', new_id}
