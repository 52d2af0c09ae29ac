-- Frees a pending Idempotency-Key claim that is still this request's (its create stored nothing).
local claim_key = KEYS[1]
local object_id = ARGV[1]

local raw = redis.call('GET', claim_key)
if not raw then return 0 end
local claim = cjson.decode(raw)
if claim['id'] ~= object_id or claim['state'] ~= 'pending' then return 0 end
return redis.call('DEL', claim_key)
