-- Creates a conversation: its object and its first items, and the Idempotency-Key claim it was made under marked
-- accepted, but only while that claim is still this request's. Returns 1, or 0 when the claim passed to
-- another request (which creates the conversation): then nothing is written. Keys of one partition.
local conv, items, claim_key = KEYS[1], KEYS[2], KEYS[3]
local conversation, ttl, claimed_id, claim_accepted, claim_ttl = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local FIRST_ITEM = 6

if claim_accepted ~= '' then
  local claim = redis.call('GET', claim_key)
  if not claim or cjson.decode(claim)['id'] ~= claimed_id then return 0 end
  redis.call('SET', claim_key, claim_accepted, 'EX', claim_ttl)
end
redis.call('SET', conv, conversation, 'EX', ttl)
if #ARGV >= FIRST_ITEM then
  redis.call('RPUSH', items, unpack(ARGV, FIRST_ITEM))
  redis.call('EXPIRE', items, ttl)
end
return 1
