"""The Lua scripts the Redis session store runs inside Redis (cache/redis_sessions.py).

Each store operation is one script, so each is atomic (Redis runs one script at a time) and one
network round trip. The keys of a session (prefix P, session id S, channel id C):

    P c:C        string  the session id of channel C
    P s:S:meta   hash    the session's scalar fields (JSON values; counters as integers;
                         `opened_at` Redis' clock in seconds) and `me`, the model epoch
                         (bumped whenever snap/log are replaced)
    P s:S:chan   hash    C -> "generation last_qid lease_until_ms owner" of each channel
    P s:S:wait   hash    C -> requests (in any process) waiting for a turn on C
    P s:S:snap   string  the cache model folded so far (cache/model_codec.py)
    P s:S:log    list    model records appended since (one entry per committed change)
    P sessions   zset    S -> last use (ms): the global count and the LRU order
    P turns      channel C published when a channel that someone waits on changes

Every key of a session gets the idle timeout as its TTL on every load (and lease renewal), so
Redis itself expires idle sessions: a session exists while its `chan` hash does. Its `meta`
outlives the rest by EPITAPH_MS, so that the next sweep (any process's) still finds who owned
an expired session, its target and byte counts, reports it (the audit line) and deletes it.

A channel is busy while its lease runs (`lease_until_ms` > Redis' clock): the holder renews it
while it writes, so a process that dies mid-response frees the channel when the lease runs out.
Scripts read Redis' clock (TIME), never a worker's.

Large values (the snapshot, model records) do not pass through a script: data crossing Lua costs
about 1.5 us per KB, against a fraction of that for GET, LRANGE and RPUSH. The store sends the
scripts and those commands together in one MULTI/EXEC transaction instead (one round trip,
atomic). Two exceptions, both small: `LOAD` returns the few records appended since the
caller's copy of the model, and `COMPACT`, run once per `compact_after` appends, takes the
snapshot, to write it only if the model was not replaced meanwhile.

The scripts name keys they compute from the session id, so they run on a single Redis server or
a primary with replicas, not on Redis Cluster.
"""
from __future__ import annotations

# How long a session's `meta` outlives its other keys after it expired (a sweep, which runs every
# 30 s at most in every process, reports and deletes it within that time).
EPITAPH_MS = 600_000

# Shared helpers, prepended to every script.
_COMMON = f"local EPITAPH_MS = {EPITAPH_MS}\n" + r"""
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local SUFFIXES = {':meta', ':chan', ':wait', ':snap', ':log'}

local function touch(p, sid, idle, now)
  local base = p .. 's:' .. sid
  for _, suffix in ipairs(SUFFIXES) do
    redis.call('PEXPIRE', base .. suffix, idle)
  end
  redis.call('PEXPIRE', base .. ':meta', idle + EPITAPH_MS)  -- read when it expired
  for _, cid in ipairs(redis.call('HKEYS', base .. ':chan')) do
    redis.call('PEXPIRE', p .. 'c:' .. cid, idle)
  end
  redis.call('ZADD', p .. 'sessions', now, sid)
end

local function parse_channel(v)
  local g, q, lease, owner = string.match(v, '^(%-?%d+) (%-?%d+) (%d+) (%S+)$')
  return tonumber(g), tonumber(q), tonumber(lease), owner
end

local function pack_channel(g, q, lease, owner)
  return g .. ' ' .. q .. ' ' .. lease .. ' ' .. owner
end

local function session_busy(p, sid, now)
  for _, v in ipairs(redis.call('HVALS', p .. 's:' .. sid .. ':chan')) do
    local _, _, lease = parse_channel(v)
    if lease > now then return true end
  end
  return false
end

local function notify(p, sid, cid)
  local waiting = tonumber(redis.call('HGET', p .. 's:' .. sid .. ':wait', cid) or '0')
  if waiting > 0 then redis.call('PUBLISH', p .. 'turns', cid) end
end

local function drop(p, sid)
  local base = p .. 's:' .. sid
  for _, cid in ipairs(redis.call('HKEYS', base .. ':chan')) do
    notify(p, sid, cid)
    if redis.call('GET', p .. 'c:' .. cid) == sid then redis.call('DEL', p .. 'c:' .. cid) end
  end
  redis.call('DEL', base .. ':meta', base .. ':chan', base .. ':wait', base .. ':snap',
             base .. ':log')
  redis.call('ZREM', p .. 'sessions', sid)
end

-- Sessions idle for longer than the timeout (Redis expired their keys, all but `meta`): each
-- leaves the sorted set and its meta is returned ({sid, meta} pairs, the audit line's data;
-- none when the epitaph expired too) and deleted. A session whose channels still exist (its
-- score behind its TTL) is kept. At most `limit`, the oldest first.
local function prune(p, idle, now, limit)
  local zs = p .. 'sessions'
  local pruned, ended = 0, {}
  for _, sid in ipairs(redis.call('ZRANGEBYSCORE', zs, '-inf', '(' .. (now - idle), 'LIMIT',
                                  0, limit)) do
    local base = p .. 's:' .. sid
    if redis.call('EXISTS', base .. ':chan') == 0 then
      local meta = redis.call('HGETALL', base .. ':meta')
      if #meta > 0 then ended[#ended + 1] = {sid, meta} end
      redis.call('DEL', base .. ':meta', base .. ':wait', base .. ':snap', base .. ':log')
      redis.call('ZREM', zs, sid)
      pruned = pruned + 1
    end
  end
  return pruned, ended
end
"""

# ARGV = P, sid, cid, idle_ms, from, slack_ms: a load. With from >= 0 (the caller holds the
# model up to that log entry) it returns the log entries from there, usually none or a few
# small ones; with -1 the caller reads the snapshot and the whole log by GET/LRANGE in the same
# transaction. The TTLs are renewed unless that was done in the last slack_ms (a session in use
# then expires between idle - slack and idle after its last request).
# -> false (no such channel) | {meta, chan, now, entries}
LOAD = _COMMON + r"""
local p, sid, cid, idle, from = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
local base = p .. 's:' .. sid
if redis.call('HEXISTS', base .. ':chan', cid) == 0 then return false end  -- its session's?
local meta = redis.call('HGETALL', base .. ':meta')
if #meta == 0 then return false end
local now = now_ms()
if redis.call('PTTL', base .. ':chan') < idle - tonumber(ARGV[6]) then
  touch(p, sid, idle, now)
end
local entries = {}
if from >= 0 then entries = redis.call('LRANGE', base .. ':log', from, -1) end
return {meta, redis.call('HGETALL', base .. ':chan'), now, entries}
"""

# ARGV = P, idle_ms, max_sessions, sid, cid, lease_ms, owner ('-': not busy), the opening
# request's qid (-1: none), then the meta hash's field/value pairs.
# Sets `opened_at` (Redis' clock, seconds).
# -> {1, pruned, evicted ({sid, meta} or {}), now, ended} | {-1, pruned, ended, now} (over
# capacity: every candidate busy); ended: the expired sessions pruned ({sid, meta} pairs)
OPEN = _COMMON + r"""
local p, idle, max = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local sid, cid, lease_ms, owner, qid = ARGV[4], ARGV[5], tonumber(ARGV[6]), ARGV[7], ARGV[8]
local now = now_ms()
local zs = p .. 'sessions'
-- Members idle for longer than the timeout are sessions whose keys Redis expired already.
local pruned, ended = prune(p, idle, now, 64)
local evicted = {}
if redis.call('ZCARD', zs) >= max then
  local victim = nil
  for _, s in ipairs(redis.call('ZRANGE', zs, 0, 31)) do  -- least recently used first
    if not session_busy(p, s, now) then victim = s; break end
  end
  if not victim then return {-1, pruned, ended, now} end
  evicted = {victim, redis.call('HGETALL', p .. 's:' .. victim .. ':meta')}
  drop(p, victim)
end
local base = p .. 's:' .. sid
local fields = {}
for i = 9, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', base .. ':meta', 'me', 0, unpack(fields))
redis.call('HSET', base .. ':meta', 'opened_at', string.format('%.3f', now / 1000))
local lease = 0
if owner ~= '-' then lease = now + lease_ms end
redis.call('HSET', base .. ':chan', cid, pack_channel(0, qid, lease, owner))
redis.call('SET', p .. 'c:' .. cid, sid)
touch(p, sid, idle, now)
return {1, pruned, evicted, now, ended}
"""

# ARGV = P, sid, lease_ms, then operations, each a letter and its arguments:
#   A cid                   add a channel
#   C n cid1 .. cidn        close channels (the session ends with its last)
#   R target_id_json        the file changed: new target id, empty model
#   Z                       empty model (over the size cap)
#   P cid                   pre-empt: generation + 1
#   B cid qid gen owner     begin (qid/gen '' when none): refused if the channel is held by a
#                           live lease or its generation is not gen; then nothing else runs
#   S cid qid               skip: raise last qid
#   E cid sent saved owner  end: free the channel if owner holds it; add the byte counts
# (Model records are appended by RPUSH in the same transaction, between calls of this script.)
# The request's load renewed the session's TTLs; keys made since get the session's remaining
# TTL. -> {status, now, chan, ended, log length, model epoch}; status 1 done, 0 the session is
# gone (nothing done), 2 the begin was refused (nothing done after it); when these changes
# ended the session (ended 1), chan is its meta as it was (the audit line's data)
APPLY = _COMMON + r"""
local p, sid, lease_ms = ARGV[1], ARGV[2], tonumber(ARGV[3])
local base = p .. 's:' .. sid
local meta, chan = base .. ':meta', base .. ':chan'
local ttl = redis.call('PTTL', chan)
if ttl < 0 then
  redis.call('DEL', base .. ':log')  -- records RPUSHed for a session that is gone
  return {0, 0, {}, 0, 0, 0}
end
local now = now_ms()
local i = 4
local function raise_qid(q, qid)
  if qid ~= '' and tonumber(qid) > q then return tonumber(qid) end
  return q
end
while i <= #ARGV do
  local op = ARGV[i]
  if op == 'A' then
    redis.call('HSETNX', chan, ARGV[i + 1], pack_channel(0, -1, 0, '-'))
    redis.call('SET', p .. 'c:' .. ARGV[i + 1], sid, 'PX', ttl)
    i = i + 2
  elseif op == 'C' then
    local n = tonumber(ARGV[i + 1])
    for j = i + 2, i + 1 + n do
      local cid = ARGV[j]
      notify(p, sid, cid)
      redis.call('HDEL', chan, cid)
      redis.call('HDEL', base .. ':wait', cid)
      if redis.call('GET', p .. 'c:' .. cid) == sid then redis.call('DEL', p .. 'c:' .. cid) end
    end
    i = i + 2 + n
  elseif op == 'R' or op == 'Z' then
    if op == 'R' then
      redis.call('HSET', meta, 'target_id', ARGV[i + 1])
      i = i + 2
    else
      i = i + 1
    end
    redis.call('DEL', base .. ':snap', base .. ':log')
    redis.call('HINCRBY', meta, 'me', 1)
  else
    local cid = ARGV[i + 1]
    local v = redis.call('HGET', chan, cid)
    local g, q, lease, owner = 0, -1, 0, '-'
    if v then g, q, lease, owner = parse_channel(v) end
    if op == 'P' then
      if v then redis.call('HSET', chan, cid, pack_channel(g + 1, q, lease, owner)) end
      i = i + 2
    elseif op == 'B' then
      local gen = ARGV[i + 3]
      if not v or lease > now or (gen ~= '' and tonumber(gen) ~= g) then
        return {2, now, redis.call('HGETALL', chan), 0, 0, 0}
      end
      q = raise_qid(q, ARGV[i + 2])
      redis.call('HSET', chan, cid, pack_channel(g, q, now + lease_ms, ARGV[i + 4]))
      i = i + 5
    elseif op == 'S' then
      if v then redis.call('HSET', chan, cid, pack_channel(g, raise_qid(q, ARGV[i + 2]), lease,
                                                           owner)) end
      i = i + 3
    elseif op == 'E' then
      if v then
        if owner == ARGV[i + 4] then
          redis.call('HSET', chan, cid, pack_channel(g, q, 0, '-'))
        end
        redis.call('HINCRBY', meta, 'bytes_sent', ARGV[i + 2])
        redis.call('HINCRBY', meta, 'bytes_saved', ARGV[i + 3])
      end
      i = i + 5
    else
      return redis.error_reply('unknown session operation ' .. op)
    end
    if op ~= 'B' or ARGV[i - 3] ~= '' then notify(p, sid, cid) end
  end
end
if redis.call('HLEN', chan) == 0 then
  local was = redis.call('HGETALL', meta)
  drop(p, sid)
  return {1, now, was, 1, 0, 0}
end
local log = base .. ':log'
if redis.call('PTTL', log) == -1 then redis.call('PEXPIRE', log, ttl) end  -- made by RPUSH
return {1, now, redis.call('HGETALL', chan), 0, redis.call('LLEN', log),
        tonumber(redis.call('HGET', meta, 'me'))}
"""

# ARGV = P, idle_ms, lease_ms, then (sid, cid, owner) triples: leases this process holds.
# -> how many were still held (and renewed)
RENEW = _COMMON + r"""
local p, idle, lease_ms = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local now = now_ms()
local renewed = 0
for i = 4, #ARGV, 3 do
  local sid, cid, owner = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local chan = p .. 's:' .. sid .. ':chan'
  local v = redis.call('HGET', chan, cid)
  if v then
    local g, q, _, held_by = parse_channel(v)
    if held_by == owner then
      redis.call('HSET', chan, cid, pack_channel(g, q, now + lease_ms, owner))
      touch(p, sid, idle, now)
      renewed = renewed + 1
    end
  end
end
return renewed
"""

# KEYS[1] = P c:C; ARGV = P, cid, delta (+1 / -1): a request starts or stops waiting on C.
WATCH = r"""
local p, cid, delta = ARGV[1], ARGV[2], tonumber(ARGV[3])
local sid = redis.call('GET', KEYS[1])
if not sid then return 0 end
local wait = p .. 's:' .. sid .. ':wait'
local n = redis.call('HINCRBY', wait, cid, delta)
if n <= 0 then redis.call('HDEL', wait, cid) end
local ttl = redis.call('PTTL', p .. 's:' .. sid .. ':chan')
if ttl > 0 then redis.call('PEXPIRE', wait, ttl) end
return n
"""

# ARGV = P, sid, epoch, entries, snapshot, idle_ms: folds the first `entries` log entries into
# the snapshot, if the model was not replaced since it was loaded at `epoch`.
COMPACT = r"""
local p, sid, epoch, n = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local base = p .. 's:' .. sid
if redis.call('EXISTS', base .. ':chan') == 0 then return 0 end  -- expired
if redis.call('HGET', base .. ':meta', 'me') ~= epoch then return 0 end
redis.call('SET', base .. ':snap', ARGV[5], 'PX', ARGV[6])
redis.call('LTRIM', base .. ':log', n, -1)
redis.call('HINCRBY', base .. ':meta', 'me', 1)
return 1
"""

# ARGV = P, idle_ms, limit -> {sessions pruned as expired, sessions open, now, ended ({sid,
# meta} pairs)}
SWEEP = _COMMON + r"""
local p, idle = ARGV[1], tonumber(ARGV[2])
local now = now_ms()
local pruned, ended = prune(p, idle, now, tonumber(ARGV[3]))
return {pruned, redis.call('ZCARD', p .. 'sessions'), now, ended}
"""
