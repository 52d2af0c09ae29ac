-- Enqueues an arq job as arq's enqueue_job does (refused while the job or its result exists), and wakes one
-- idle worker, in one round trip. Returns 1 when enqueued.
local job_key, result_key, queue, wake = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local job, ttl_ms, score, job_id, max_wake = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])

return enqueue(job_key, result_key, queue, wake, job, ttl_ms, score, job_id, max_wake)
