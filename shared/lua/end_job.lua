-- arq's bookkeeping for a job that ran (its finish_job / finish_failed_job) and the lease's release, in one
-- round trip. A job that is not finished goes back on the queue at the given score, if the lease was ours.
local marker, running, retry, job, queue = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local job_id, token, finished, requeue_score = ARGV[1], ARGV[2], ARGV[3], ARGV[4]

if finished == '1' then return finish_job(marker, running, retry, job, job_id, token) end
if release_lease(marker, running, job_id, token) == 0 then return 0 end
if requeue_score ~= '' then redis.call('ZADD', queue, requeue_score, job_id) end
return 1
