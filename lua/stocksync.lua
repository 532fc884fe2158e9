#!lua name=stocksync
--[[
  stocksync: the only code that changes stock.

  Every function touches the keys of one partition (one hash tag, one cluster slot). Keys are passed in,
  never built here, with one exception (the reference buckets, below); the functions check that the keys
  they are given belong together. Replies are arrays whose first element is a status string
  (stocksync_get, stocksync_ref and the no-argument functions excepted). Bad arguments get an error reply
  starting "ERR stocksync:" and change nothing: every check runs before the first write.

  Key layout (tag = {<prefix>:<partition>}):
    <tag>:sku:<sku>    hash: available, version, updated_ms, source (reserved, absent means 0)
    <tag>:events       stream: one entry per applied change (stock.changed) or rejection (stock.rejected)
    <tag>:idem:<ref>   the reference key: callers pass it (it names the reference, as before 0.5.0). Since
                       0.5.0 it holds a record only for an order whose first outcome is too long for a
                       bucket (a string with a TTL), and is read while records of 0.4 can still exist.
    <tag>:refs:<hhh>   hash, one of 4096 reference buckets per partition (<hhh>: 3 hex digits):
                       field = 16 hex digits of sha1(reference key), value = the unix second of the first
                       use (10 digits) followed by the first outcome (o|available|version, ...).

  Exactly once, per reference key and partition: the outcome is decided first, then stored with one
  HSETNX into the reference's bucket; if the field was there and is younger than IDEM_TTL_S, nothing
  changes and the stored outcome is replayed.

  The buckets are the one deviation from "keys are passed in": a call names its reference key, and the
  function derives the bucket from that key's hash tag and a digest of it. Redis Cluster serves an
  undeclared key only from the slot of the declared ones; the tag guarantees that it is that slot, and
  the functions refuse a reference key of another partition. While that slot is being migrated, a
  bucket that has already moved makes the call fail ("Script attempted to access a non local key")
  before its first write: such a call is refused, never applied twice, and once retried after the
  migration it goes to the new node. (Redis checks every key a script touches; declared keys get
  ASK/TRYAGAIN before the script runs.)

  Why buckets: a key with a TTL per reference cost 197 bytes on Redis 7.0 (name, dict entry, value
  object, expires entry), a field of a listpack hash 53-57. Why not per-field TTLs (HSETEX/HEXPIRE,
  Redis 7.4+ and Valkey 9): a hash with field TTLs is no longer a listpack (85 bytes a reference on
  Valkey 9.1), and Redis 7.0 has none.

  Forgetting: a record older than IDEM_TTL_S is treated as absent at once (the window is exact to the
  second and never shrinks), and removed by a bounded sweep that the writing functions run themselves:
  at most one HSCAN page (COUNT 128) of one bucket per call, the buckets of a partition in turn, each
  once per IDEM_TTL_S / 2 while calls come in (a record stays at most 1.5 windows). No worker is
  needed; with no calls nothing is swept, and expired records only take memory (never replayed).
  A bucket holds refs-in-window / 4096 records; past hash-max-listpack-entries (512 by default here,
  128 in many configs) Redis makes it a hashtable, which works the same at about 90 bytes a reference.

  False replays: two reference keys share a record only if 76 bits of their sha1 do (16 hex digits of
  field, 3 of bucket): about 2e-9 per 17 million references remembered at once in one partition.
]]

local VERSION = '0.5.0'
-- How long a reference is remembered (seconds). A property of the deployment, not of a call: the
-- Python loader rewrites this line from STOCKSYNC_IDEM_TTL when it loads the library.
local IDEM_TTL_S = 172800
local IDEM_TTL_ARG = (IDEM_TTL_S + 1) .. ''  -- an overflow record's key outlives its bucket field
-- Until this unix second, references may still be recorded the 0.4 way (a string at the reference key
-- with a TTL): every call looks there first. The loader writes it when it replaces a 0.4 library (the
-- upgrade time + the old TTL) and keeps it on later loads; 0: none.
local LEGACY_UNTIL = 0

local MAX_QTY = 2147483647
local MAX_SKU_LEN = 255
local MAX_REF_LEN = 256
local MAX_SOURCE_LEN = 64
local MAX_ORDER_LINES = 250
local MAX_VERSION = 99999999999  -- 11 digits: the most integer() reads
local MAX_DURATION_MS = 99999999999  -- a retention or idle time (3 years)

local REF_BUCKETS = 4096     -- per partition: 3 hex digits of the digest
local REF_INLINE_MAX = 54    -- longest outcome kept in a bucket: 10 + 54 <= 64 bytes keeps the listpack
local SWEEP_COUNT = 128      -- HSCAN COUNT of one sweep step (a listpack bucket comes whole)
local SWEEP_CYCLE_S = IDEM_TTL_S / 2  -- every bucket swept once per this many seconds, if calls come
local SWEEP_STEP_S = SWEEP_CYCLE_S / REF_BUCKETS

-- Errors -----------------------------------------------------------------------------------------------

-- Validation raises {stocksync = message}; guarded() turns it into a clean error reply. A plain
-- error() would carry "script: ..., on @user_function" in the message.
local function fail(message)
  error({stocksync = message})
end

local function guarded(fn)
  return function(keys, args)
    local ok, result = pcall(fn, keys, args)
    if ok then
      return result
    end
    if type(result) == 'table' and result.stocksync then
      return redis.error_reply('ERR stocksync: ' .. result.stocksync)
    end
    error(result)
  end
end

-- Arguments --------------------------------------------------------------------------------------------

local function integer(value, name, low, high)
  if type(value) ~= 'string' or not string.find(value, '^%-?%d+$') or #value > 11 then
    fail(name .. ' must be an integer, got ' .. (value and string.format('%q', value) or 'nothing'))
  end
  local n = tonumber(value)
  if n < low or n > high then
    fail(name .. ' must be between ' .. low .. ' and ' .. high .. ', got ' .. value)
  end
  return n
end

local function text(value, name, max_len)
  if type(value) ~= 'string' or value == '' then
    fail(name .. ' must not be empty')
  end
  if #value > max_len then
    fail(name .. ' must be at most ' .. max_len .. ' bytes')
  end
  return value
end

-- The SKU key names the partition (its hash tag) and the SKU.
local function sku_of(sku_key)
  local tag, sku = string.match(sku_key or '', '^(%b{}):sku:(.+)$')
  if not tag then
    fail('not a SKU key: ' .. string.format('%q', sku_key or ''))
  end
  if #sku > MAX_SKU_LEN then
    fail('SKU must be at most ' .. MAX_SKU_LEN .. ' bytes')
  end
  return tag, sku
end

-- The names derived from a tag, built once per partition: every string built per call costs time.
-- Callers choose the tags, so the cache starts over past TAG_CACHE_SIZE rather than grow without bound.
local TAG_CACHE_SIZE = 10000
local heads, heads_n = {}, 0
local function heads_of(tag)
  local h = heads[tag]
  if not h then
    if heads_n >= TAG_CACHE_SIZE then
      heads, heads_n = {}, 0
    end
    h = {events = tag .. ':events', idem = tag .. ':idem:', refs = tag .. ':refs:'}
    heads[tag], heads_n = h, heads_n + 1
  end
  return h
end

local function same_partition(tag, events_key, idem_key)
  local h = heads_of(tag)
  if events_key ~= h.events then
    fail('events key ' .. string.format('%q', events_key or '') .. ' is not ' .. tag .. ':events')
  end
  -- The caller names the reference key from the ref; checking its partition is what keeps a call in
  -- one slot (an exact match would also forbid hashing long references into shorter keys).
  if type(idem_key) ~= 'string' or #idem_key <= #h.idem or string.find(idem_key, h.idem, 1, true) ~= 1 then
    fail('reference key ' .. string.format('%q', idem_key or '') .. ' is not ' .. h.idem .. '<ref>')
  end
end

-- The arguments every mutation of one SKU shares: KEYS sku, events, idem; ARGV[2] source, ARGV[3] ref.
local function mutation(keys, args)
  if #keys ~= 3 then
    fail('expected 3 keys (sku, events, reference), got ' .. #keys)
  end
  local source = text(args[2], 'source', MAX_SOURCE_LEN)
  local ref = text(args[3], 'ref', MAX_REF_LEN)
  local tag, sku = sku_of(keys[1])
  same_partition(tag, keys[2], keys[3])
  return tag, sku, source, ref
end

-- References ---------------------------------------------------------------------------------------------

-- The bucket and field of a reference key. The field's digits (25-40) and the bucket's (1-3) are
-- disjoint, so two keys collide only if 76 bits of their sha1 do.
local function ref_slot(tag, idem_key)
  local h = redis.sha1hex(idem_key)
  return heads_of(tag).refs .. string.sub(h, 1, 3), string.sub(h, 25, 40)
end

-- The first outcome a bucket value holds, or nil if it is older than the window (now: unix seconds as
-- TIME gives them). 'k': the outcome was too long for the bucket and is at the reference key.
local function outcome_of(value, idem_key, now)
  if tonumber(now) - tonumber(string.sub(value, 1, 10)) > IDEM_TTL_S then
    return nil
  end
  local first = string.sub(value, 11)
  if first == 'k' then
    return redis.call('GET', idem_key) or nil  -- gone with its TTL: expired too
  end
  return first
end

-- A 0.4 record of the reference key, while one can still exist.
local function legacy(idem_key, now)
  if LEGACY_UNTIL > 0 and tonumber(now) < LEGACY_UNTIL then
    return redis.call('GET', idem_key) or nil
  end
  return nil
end

-- The first outcome of a reference if it is remembered, else nil; changes nothing.
local function recall(tag, idem_key)
  local now = redis.call('TIME')[1]
  local old = legacy(idem_key, now)
  if old then
    return old
  end
  local bucket, field = ref_slot(tag, idem_key)
  local value = redis.call('HGET', bucket, field)
  return value and outcome_of(value, idem_key, now)
end

-- One step of the sweep of a partition's buckets: at most one HSCAN page of one bucket. The buckets are
-- visited in turn, one every SWEEP_STEP_S (so each once per SWEEP_CYCLE_S) while calls come often
-- enough; when they come less often, each call sweeps the next bucket, and a backlog after an idle
-- spell is capped at one cycle. The progress kept here (this Lua state, per partition) only decides
-- what to sweep next: losing it (a restart, a failover, a reload) starts again at a bucket the clock
-- picks. Only records older than the window go, so sweeping early or twice is harmless.
local sweeps, sweeps_n = {}, 0
local function sweep(tag, clock)
  local s = sweeps[tag]
  -- Most calls stop here: a comparison of two 10-digit strings (the whole seconds of when it is due).
  if s and s.cursor == '0' and clock[1] < s.due_s then
    return
  end
  local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
  if not s then
    if sweeps_n >= TAG_CACHE_SIZE then  -- as heads_of: bounded, and losing the progress is harmless
      sweeps, sweeps_n = {}, 0
    end
    s = {due = now, due_s = '', bucket = math.floor(now / SWEEP_STEP_S) % REF_BUCKETS, cursor = '0'}
    sweeps[tag], sweeps_n = s, sweeps_n + 1
  end
  if s.cursor == '0' and now < s.due then
    return
  end
  local bucket = heads_of(tag).refs .. string.format('%03x', s.bucket)
  -- pcall: on a cluster, a bucket of a slot being migrated may already be on the other node; the
  -- call's own change is done by now, so the sweep skips that step rather than fail the call.
  local page = redis.pcall('HSCAN', bucket, s.cursor, 'COUNT', SWEEP_COUNT)
  if page.err then
    return
  end
  s.cursor = page[1]
  if s.cursor == '0' then
    s.bucket = (s.bucket + 1) % REF_BUCKETS
    s.due = math.max(s.due + SWEEP_STEP_S, now - SWEEP_CYCLE_S)
    s.due_s = string.format('%010d', math.floor(s.due))
  end
  -- A value is its first-use second (10 digits) then a letter, so comparing it whole with the 10-digit
  -- cutoff orders it by that second (no substring to build): below the cutoff is past the window.
  local cutoff = string.format('%010d', tonumber(clock[1]) - IDEM_TTL_S)
  local flat, gone = page[2], {}
  for i = 2, #flat, 2 do
    if flat[i] < cutoff then
      gone[#gone + 1] = flat[i - 1]
    end
  end
  if #gone > 0 then
    redis.call('HDEL', bucket, unpack(gone))
  end
end

-- Stores the outcome under the reference unless it is remembered already; returns the stored one if
-- so. One HSETNX on the common path; the rest only on a replay, an expired record or an upgrade.
local function remember(tag, idem_key, record)
  local clock = redis.call('TIME')
  local now = clock[1]
  if LEGACY_UNTIL > 0 then
    local old = legacy(idem_key, now)
    if old then
      return old
    end
  end
  local bucket, field = ref_slot(tag, idem_key)
  local inline = #record <= REF_INLINE_MAX
  local value = now .. (inline and record or 'k')
  if redis.call('HSETNX', bucket, field, value) == 0 then
    local first = outcome_of(redis.call('HGET', bucket, field), idem_key, now)
    if first then
      return first
    end
    redis.call('HSET', bucket, field, value)  -- the record there is past the window: a first use
  end
  if not inline then
    redis.call('SET', idem_key, record, 'EX', IDEM_TTL_ARG)
  end
  sweep(tag, clock)
  return nil
end

-- State, records and events ----------------------------------------------------------------------------

-- Returns available, version; nil when the SKU does not exist (every SKU has a version >= 1).
local function read(sku_key)
  local cur = redis.call('HMGET', sku_key, 'available', 'version')
  if not cur[2] then
    return nil, nil
  end
  return tonumber(cur[1]), tonumber(cur[2])
end

local STATUS_CODE = {ok = 'o', insufficient = 'i', conflict = 'c', unknown_sku = 'u'}
local CODE_STATUS = {o = 'ok', i = 'insufficient', c = 'conflict', u = 'unknown_sku'}

-- A reference names one operation. Reused for an operation of another shape (an order's reference
-- for a decrement, an order with other lines), its record cannot be replayed: refuse, change nothing.
local function reused(ref)
  fail('reference ' .. string.format('%q', ref) .. ' was first used for a different operation')
end

local function replay_single(record, ref)
  local code, available, version = string.match(record, '^(%a)|(%-?%d+)|(%d+)$')
  if not code then
    reused(ref)
  end
  return {CODE_STATUS[code], tonumber(available), tonumber(version), 1}
end

-- The entry ID's first part is the server's clock in ms when the change committed (monotonic per
-- stream), so it is the event's timestamp and the SKU's updated_ms: no TIME call, no ts field.
local function apply(sku_key, events_key, sku, available, version, delta, source, ref)
  local id = redis.call('XADD', events_key, '*', 'type', 'stock.changed', 'sku', sku,
    'available', available, 'delta', delta, 'version', version, 'source', source, 'ref', ref)
  redis.call('HSET', sku_key, 'available', available, 'version', version,
    'updated_ms', string.sub(id, 1, string.find(id, '-', 1, true) - 1), 'source', source)
end

local function flag(events_key, sku, available, version, delta, source, ref, reason)
  redis.call('XADD', events_key, '*', 'type', 'stock.rejected', 'sku', sku, 'available', available,
    'delta', delta, 'version', version, 'source', source, 'ref', ref, 'reason', reason)
end

-- A change of one SKU by delta, refused (insufficient) if it would take stock below zero.
local function change_by(keys, tag, sku, delta, source, ref)
  local sku_key, events_key, idem_key = keys[1], keys[2], keys[3]
  local available, version = read(sku_key)
  if not version then
    local first = recall(tag, idem_key)
    if first then
      return replay_single(first, ref)
    end
    return {'unknown_sku', 0, 0, 0}
  end
  local after = available + delta
  if after > MAX_QTY then
    fail('available would exceed ' .. MAX_QTY)
  end
  local status = after < 0 and 'insufficient' or 'ok'
  if status == 'ok' then
    version = version + 1
    available = after
  end
  -- Numbers as strings once, for the record, the event and the hash alike.
  local a, v = tostring(available), tostring(version)
  local first = remember(tag, idem_key, STATUS_CODE[status] .. '|' .. a .. '|' .. v)
  if first then
    return replay_single(first, ref)
  end
  if status == 'ok' then
    apply(sku_key, events_key, sku, a, v, tostring(delta), source, ref)
  else
    flag(events_key, sku, a, v, tostring(delta), source, ref, 'insufficient')
  end
  return {status, available, version, 0}
end

-- Functions ---------------------------------------------------------------------------------------------

--[[
  stocksync_decrement: take qty units of a SKU, or nothing if fewer are available.
    KEYS[1] <tag>:sku:<sku>   KEYS[2] <tag>:events   KEYS[3] <tag>:idem:<ref>
    ARGV[1] qty (1 .. 2^31-1)  ARGV[2] source (channel or service)  ARGV[3] ref (idempotency key)
  Reply: {status, available, version, replayed}
    status ok | insufficient | unknown_sku; available and version after the call (unchanged unless ok);
    replayed 1 when ref was seen before: the first outcome is returned and nothing changes.
  Events: ok -> stock.changed; insufficient -> stock.rejected (reason insufficient); unknown_sku -> none
  and the reference is not remembered, so the same call can succeed once the SKU exists.
  Also writes: the reference's bucket <tag>:refs:<hhh> (see the header), and one sweep step.
]]
local function decrement(keys, args)
  local tag, sku, source, ref = mutation(keys, args)
  local qty = integer(args[1], 'qty', 1, MAX_QTY)
  return change_by(keys, tag, sku, -qty, source, ref)
end

--[[
  stocksync_adjust: add (restock, return) or remove (damage, count) units.
    KEYS as stocksync_decrement.
    ARGV[1] delta (non-zero, |delta| <= 2^31-1)  ARGV[2] source  ARGV[3] ref
  Reply: {status, available, version, replayed}, status ok | insufficient | unknown_sku.
  A delta that would take available below 0 is insufficient; above 2^31-1 is an error.
]]
local function adjust(keys, args)
  local tag, sku, source, ref = mutation(keys, args)
  local delta = integer(args[1], 'delta', -MAX_QTY, MAX_QTY)
  if delta == 0 then
    fail('delta must not be 0')
  end
  return change_by(keys, tag, sku, delta, source, ref)
end

--[[
  stocksync_set: set the absolute quantity; creates the SKU if it does not exist.
    KEYS as stocksync_decrement.
    ARGV[1] available (0 .. 2^31-1)  ARGV[2] source  ARGV[3] ref
    ARGV[4] expected_version (optional; 0 = the SKU must not exist yet)
  Reply: {status, available, version, replayed}, status ok | conflict.
  conflict: expected_version differs from the current version; nothing changes, no event, and the
  reply carries the current available and version. Every applied set bumps the version, even to the
  same quantity, so that channels are pushed again.
]]
local function set(keys, args)
  local tag, sku, source, ref = mutation(keys, args)
  local target = integer(args[1], 'available', 0, MAX_QTY)
  local expected = nil
  if args[4] ~= nil then
    expected = integer(args[4], 'expected_version', 0, MAX_VERSION)
  end
  if #args > 4 then
    fail('expected at most 4 arguments, got ' .. #args)
  end
  local sku_key, events_key, idem_key = keys[1], keys[2], keys[3]
  local available, version = read(sku_key)
  available, version = available or 0, version or 0
  local status, record = 'ok', nil
  if expected and expected ~= version then
    status = 'conflict'
    record = 'c|' .. available .. '|' .. version
  else
    record = 'o|' .. target .. '|' .. (version + 1)
  end
  local first = remember(tag, idem_key, record)
  if first then
    return replay_single(first, ref)
  end
  if status == 'conflict' then
    return {status, available, version, 0}
  end
  apply(sku_key, events_key, sku, target, version + 1, target - available, source, ref)
  return {'ok', target, version + 1, 0}
end

local function replay_order(record, skus, ref)
  local code, rest = string.match(record, '^(%a)|(.*)$')
  local out, i = {}, 1
  for a, v in string.gmatch(rest or '', '(%-?%d+),(%d+)') do
    out[i] = {skus[i] or '', tonumber(a), tonumber(v)}
    i = i + 1
  end
  if i - 1 ~= #skus or string.find(rest, '|', 1, true) then
    reused(ref)
  end
  return {CODE_STATUS[code], out, 1}
end

--[[
  stocksync_order: take several lines of one partition all-or-nothing under one reference.
    KEYS[1] <tag>:events   KEYS[2] <tag>:idem:<ref>   KEYS[3..n+2] <tag>:sku:<sku> (n lines, SKUs distinct)
    ARGV[1] source  ARGV[2] ref  ARGV[3..n+2] qty of each line, in the order of the SKU keys
  Reply: {status, lines, replayed}, lines = {{sku, available, version}, ...} in the order given.
    ok: every line taken, one stock.changed per line, each SKU's version + 1.
    insufficient: nothing changes; lines carry the current quantities; one stock.rejected per short line.
    unknown_sku: nothing changes, nothing remembered; unknown lines carry nil available and version.
  Also writes: the reference's bucket, one sweep step, and KEYS[2] (with a TTL) when the first outcome
  is longer than a bucket holds (REF_INLINE_MAX bytes: a few lines).
]]
local function order(keys, args)
  local n = #keys - 2
  if n < 1 or n > MAX_ORDER_LINES then
    fail('an order needs 1 to ' .. MAX_ORDER_LINES .. ' lines, got ' .. n)
  end
  if #args ~= n + 2 then
    fail('expected ' .. n .. ' quantities for ' .. n .. ' SKU keys, got ' .. (#args - 2))
  end
  local events_key, idem_key = keys[1], keys[2]
  local source = text(args[1], 'source', MAX_SOURCE_LEN)
  local ref = text(args[2], 'ref', MAX_REF_LEN)
  local skus, qtys, seen, tag = {}, {}, {}, nil
  for i = 1, n do
    local line_tag, sku = sku_of(keys[i + 2])
    if tag and line_tag ~= tag then
      fail('line ' .. i .. ' is in partition ' .. line_tag .. ', not ' .. tag)
    end
    tag = line_tag
    if seen[sku] then
      fail('SKU ' .. string.format('%q', sku) .. ' appears twice; merge the lines')
    end
    seen[sku] = true
    skus[i] = sku
    qtys[i] = integer(args[i + 2], 'qty of line ' .. i, 1, MAX_QTY)
  end
  same_partition(tag, events_key, idem_key)

  local avail, vers, short, unknown = {}, {}, false, false
  for i = 1, n do
    avail[i], vers[i] = read(keys[i + 2])
    if not vers[i] then
      unknown = true
    elseif avail[i] < qtys[i] then
      short = true
    end
  end

  local function lines()
    local out = {}
    for i = 1, n do
      out[i] = {skus[i], avail[i] or false, vers[i] or false}
    end
    return out
  end

  if unknown then
    local first = recall(tag, idem_key)
    if not first then
      return {'unknown_sku', lines(), 0}
    end
    return replay_order(first, skus, ref)
  end

  local status = short and 'insufficient' or 'ok'
  if not short then
    for i = 1, n do
      avail[i] = avail[i] - qtys[i]
      vers[i] = vers[i] + 1
    end
  end
  local parts = {}
  for i = 1, n do
    parts[i] = avail[i] .. ',' .. vers[i]
  end
  local first = remember(tag, idem_key, STATUS_CODE[status] .. '|' .. table.concat(parts, ';'))
  if first then
    return replay_order(first, skus, ref)
  end

  for i = 1, n do
    if not short then
      apply(keys[i + 2], events_key, skus[i], avail[i], vers[i], -qtys[i], source, ref)
    elseif avail[i] < qtys[i] then
      flag(events_key, skus[i], avail[i], vers[i], -qtys[i], source, ref, 'insufficient')
    end
  end
  return {status, lines(), 0}
end


--[[
  stocksync_get (FCALL_RO): read one SKU.
    KEYS[1] <tag>:sku:<sku>
  Reply: {available, reserved, version, updated_ms, source}, or an empty array for an unknown SKU.
]]
local function get(keys, args)
  if #keys ~= 1 then
    fail('expected 1 key (sku), got ' .. #keys)
  end
  sku_of(keys[1])
  local h = redis.call('HMGET', keys[1], 'available', 'reserved', 'version', 'updated_ms', 'source')
  if not h[3] then
    return {}
  end
  return {tonumber(h[1]), tonumber(h[2] or 0), tonumber(h[3]), tonumber(h[4]), h[5]}
end

--[[
  stocksync_ref (FCALL_RO): whether a reference is remembered, and with which outcome.
    KEYS[1] <tag>:idem:<ref>   the reference key the mutation was (or would be) called with
  Reply: the first outcome's status, ok | insufficient | conflict; nil when the reference is not
    remembered (never used, only answered unknown_sku, or past the window). An order's status is its
    own (ok: every line was taken).
  Changes nothing, so it also answers on a replica.
]]
local function ref_status(keys, args)
  if #keys ~= 1 then
    fail('expected 1 key (reference), got ' .. #keys)
  end
  local tag = string.match(keys[1], '^(%b{}):idem:.')
  if not tag or #keys[1] > #tag + 6 + MAX_REF_LEN then
    fail('not a reference key: ' .. string.format('%q', keys[1]))
  end
  local first = recall(tag, keys[1])
  return first and CODE_STATUS[string.sub(first, 1, 1)] or false
end

--[[
  stocksync_version: the library version string (the loader replaces older libraries).
  stocksync_idem_ttl: seconds a reference is remembered, as loaded.
  stocksync_legacy_until: the unix second until which 0.4 reference keys are read (0: none), as loaded.
    no keys, no arguments.
]]
redis.register_function('stocksync_decrement', guarded(decrement))
redis.register_function('stocksync_adjust', guarded(adjust))
redis.register_function('stocksync_set', guarded(set))
redis.register_function('stocksync_order', guarded(order))
redis.register_function{function_name = 'stocksync_get', callback = guarded(get), flags = {'no-writes'}}
redis.register_function{function_name = 'stocksync_ref', callback = guarded(ref_status), flags = {'no-writes'}}
redis.register_function{function_name = 'stocksync_version', callback = function() return VERSION end,
  flags = {'no-writes'}}
redis.register_function{function_name = 'stocksync_idem_ttl', callback = function() return IDEM_TTL_S end,
  flags = {'no-writes'}}
redis.register_function{function_name = 'stocksync_legacy_until', callback = function() return LEGACY_UNTIL end,
  flags = {'no-writes'}}

-- Channel propagation ----------------------------------------------------------------------------------
--[[
  The consumer side. Each channel has one consumer group (named after the channel) on every events
  stream. Around a push, a worker takes a short lease per SKU (pushes of one SKU to one channel never
  overlap, even across processes), reads the SKU's current quantity and the version the channel last
  accepted in the same step, and afterwards records the accepted version (never lowering it), acknowledges
  the entries that version covers and gives the leases back, in one call.

    <tag>:pushed:<channel>        hash: sku -> last version accepted by the channel
    <tag>:lease:<channel>:<sku>   string: the consumer pushing that SKU now, with a TTL
    <tag>:dlq:<channel>           stream: dead letters (sku, version, reason, attempts, error, ids, ...)
    <tag>:recheck:<channel>       sorted set: sku -> when a push of its current quantity is owed (ms)
]]

local MAX_GROUP_LEN = 64
local MAX_TTL_MS = 3600000
local MAX_ID_LEN = 41

local function tag_of(key, kind, name)
  local tag, rest = string.match(key or '', '^(%b{}):' .. kind .. ':(.+)$')
  if not tag then
    fail('not a ' .. kind .. ' key: ' .. string.format('%q', key or ''))
  end
  if name and rest ~= name then
    fail(kind .. ' key ' .. string.format('%q', key) .. ' is not for ' .. string.format('%q', name))
  end
  return tag, rest
end

local function events_of(tag, events_key)
  if events_key ~= tag .. ':events' then
    fail('events key ' .. string.format('%q', events_key or '') .. ' is not ' .. tag .. ':events')
  end
end

local function entry_id(value, name)
  if type(value) ~= 'string' or #value > MAX_ID_LEN or not string.find(value, '^%d+%-%d+$') then
    fail(name .. ' must be a stream entry ID like 1700000000000-0, got '
      .. (value and string.format('%q', value) or 'nothing'))
  end
  return value
end

-- ARGV[first ..] as entry IDs; at least `least` of them.
local function entry_ids(args, first, name, least)
  if #args - first + 1 < least then
    fail('expected at least one ' .. name)
  end
  local ids = {}
  for i = first, #args do
    ids[#ids + 1] = entry_id(args[i], name)
  end
  return ids
end

-- "a-b" < "c-d" as stream IDs (both parts can exceed 2^53, so compare as digit strings).
local function id_less(a, b)
  local ams, aseq = string.match(a, '^(%d+)%-(%d+)$')
  local bms, bseq = string.match(b, '^(%d+)%-(%d+)$')
  if ams ~= bms then
    return #ams < #bms or (#ams == #bms and ams < bms)
  end
  return #aseq < #bseq or (#aseq == #bseq and aseq < bseq)
end

-- The ID right after id (ms-seq+1); seq stays far below 2^53 in practice.
local function id_next(id)
  local ms, seq = string.match(id, '^(%d+)%-(%d+)$')
  return ms .. '-' .. string.format('%d', tonumber(seq) + 1)
end

-- A flat RESP array of field/value pairs (XINFO replies) as a table.
local function pairs_of(flat)
  local t = {}
  for i = 1, #flat, 2 do
    t[flat[i]] = flat[i + 1]
  end
  return t
end

--[[
  stocksync_push_claim: lease SKUs for a push and read what the push needs, in one step.
    KEYS[1] <tag>:pushed:<channel>
    KEYS[2..n+1] <tag>:sku:<sku_i>      KEYS[n+2..2n+1] <tag>:lease:<channel>:<sku_i>   (n >= 1)
    ARGV[1] channel  ARGV[2] owner (the consumer)  ARGV[3] lease TTL in ms (1 .. 3600000)
  Reply: {'ok', {{sku, leased, available, version, pushed}, ...}} in the order of the SKU keys.
    leased 1 when the lease is now the owner's (new, or already the owner's: the TTL is renewed), 0 when
    another consumer holds it (available, version, pushed are then still read, for information).
    available/version false for a SKU that does not exist; pushed 0 when the channel has none yet.
]]
local function push_claim(keys, args)
  local n = (#keys - 1) / 2
  if n < 1 or n ~= math.floor(n) then
    fail('expected a pushed key, then n SKU keys and n lease keys, got ' .. #keys .. ' keys')
  end
  local channel = text(args[1], 'channel', MAX_GROUP_LEN)
  local owner = text(args[2], 'owner', MAX_SOURCE_LEN * 4)
  local ttl = integer(args[3], 'lease TTL (ms)', 1, MAX_TTL_MS)
  local tag = tag_of(keys[1], 'pushed', channel)
  local skus = {}
  for i = 1, n do
    local sku_tag, sku = sku_of(keys[1 + i])
    if sku_tag ~= tag then
      fail('SKU key ' .. string.format('%q', keys[1 + i]) .. ' is not in partition ' .. tag)
    end
    if keys[1 + n + i] ~= tag .. ':lease:' .. channel .. ':' .. sku then
      fail('lease key ' .. string.format('%q', keys[1 + n + i]) .. ' is not ' .. tag .. ':lease:' .. channel .. ':' .. sku)
    end
    skus[i] = sku
  end
  local out = {}
  for i = 1, n do
    local lease_key = keys[1 + n + i]
    local leased = 0
    if redis.call('SET', lease_key, owner, 'NX', 'PX', ttl) then
      leased = 1
    elseif redis.call('GET', lease_key) == owner then
      redis.call('PEXPIRE', lease_key, ttl)
      leased = 1
    end
    local available, version = read(keys[1 + i])
    local pushed = tonumber(redis.call('HGET', keys[1], skus[i]) or '0')
    out[i] = {skus[i], leased, available or false, version or false, pushed}
  end
  return {'ok', out}
end

--[[
  stocksync_push_done: after a push, record what the channel accepted, acknowledge, give leases back.
    KEYS[1] <tag>:pushed:<channel>   KEYS[2] <tag>:events   KEYS[3..] <tag>:lease:<channel>:<sku> to release
    ARGV[1] channel (= the consumer group)  ARGV[2] owner  ARGV[3] n (number of accepted pairs)
    ARGV[4 .. 3+2n] sku, version pairs the channel accepted   ARGV[4+2n ..] entry IDs to XACK
  Reply: {'ok', raised, acked, released}
    raised: SKUs whose recorded version went up (a version at or below the recorded one changes nothing:
    the record never goes backwards); acked: entries XACK removed from the group's pending list;
    released: leases deleted (only leases the owner holds are touched).
  The caller acknowledges only entries whose version is at or below what the channel has accepted.
]]
local function push_done(keys, args)
  if #keys < 2 then
    fail('expected the pushed and events keys, then lease keys')
  end
  local channel = text(args[1], 'channel', MAX_GROUP_LEN)
  local owner = text(args[2], 'owner', MAX_SOURCE_LEN * 4)
  local n = integer(args[3], 'number of accepted pairs', 0, 100000)
  local tag = tag_of(keys[1], 'pushed', channel)
  events_of(tag, keys[2])
  if #args < 3 + 2 * n then
    fail('expected ' .. n .. ' sku/version pairs, got ' .. math.floor((#args - 3) / 2))
  end
  local versions = {}
  for i = 1, n do
    local sku = text(args[2 + 2 * i], 'sku', MAX_SKU_LEN)
    versions[i] = {sku, integer(args[3 + 2 * i], 'version', 1, MAX_VERSION)}
  end
  local ids = entry_ids(args, 4 + 2 * n, 'entry ID', 0)
  local lease_head = tag .. ':lease:' .. channel .. ':'
  for i = 3, #keys do
    if string.sub(keys[i], 1, #lease_head) ~= lease_head or #keys[i] == #lease_head then
      fail('lease key ' .. string.format('%q', keys[i]) .. ' is not ' .. lease_head .. '<sku>')
    end
  end
  local raised = 0
  for _, pair in ipairs(versions) do
    local cur = tonumber(redis.call('HGET', keys[1], pair[1]) or '0')
    if pair[2] > cur then
      redis.call('HSET', keys[1], pair[1], pair[2])
      raised = raised + 1
    end
  end
  local acked = 0
  if #ids > 0 then
    acked = redis.call('XACK', keys[2], channel, unpack(ids))
  end
  local released = 0
  for i = 3, #keys do
    if redis.call('GET', keys[i]) == owner then
      redis.call('DEL', keys[i])
      released = released + 1
    end
  end
  return {'ok', raised, acked, released}
end

--[[
  stocksync_dead_letter: move a SKU's pending entries to the channel's dead-letter stream, atomically
  with their XACK.
    KEYS[1] <tag>:events   KEYS[2] <tag>:dlq:<channel>
    ARGV[1] channel (= the consumer group)  ARGV[2] sku  ARGV[3] version (the newest of the entries)
    ARGV[4] reason (permanent | max_attempts | max_deliveries | ...)  ARGV[5] attempts
    ARGV[6] last error (text, may be '-')  ARGV[7 ..] entry IDs (at least one)
  Reply: {status, dead_letter_id, acked}
    ok: XACK removed acked >= 1 of the entries, and one dead-letter entry was added with fields
      sku, version, reason, attempts, error, ids (comma-separated), group, ts (ms, server clock).
    not_pending: none of the entries was pending in the group any more (another consumer settled them):
      nothing is added, dead_letter_id is ''.
]]
local function dead_letter(keys, args)
  if #keys ~= 2 then
    fail('expected 2 keys (events, dead letters), got ' .. #keys)
  end
  local channel = text(args[1], 'channel', MAX_GROUP_LEN)
  local sku = text(args[2], 'sku', MAX_SKU_LEN)
  local version = integer(args[3], 'version', 0, MAX_VERSION)
  local reason = text(args[4], 'reason', 64)
  local attempts = integer(args[5], 'attempts', 0, 1000000000)
  local err = text(args[6], 'error', 4096)
  local ids = entry_ids(args, 7, 'entry ID', 1)
  local tag = tag_of(keys[2], 'dlq', channel)
  events_of(tag, keys[1])
  local acked = redis.call('XACK', keys[1], channel, unpack(ids))
  if acked == 0 then
    return {'not_pending', '', 0}
  end
  local now = redis.call('TIME')
  local ts = now[1] .. string.format('%03d', math.floor(tonumber(now[2]) / 1000))
  local id = redis.call('XADD', keys[2], '*', 'sku', sku, 'version', version, 'reason', reason,
    'attempts', attempts, 'error', err, 'ids', table.concat(ids, ','), 'group', channel, 'ts', ts)
  return {'ok', id, acked}
end

--[[
  stocksync_dlq_resolve: after a replay pushed a SKU, record the accepted version and remove its
  dead letters, in one step.
    KEYS[1] <tag>:pushed:<channel>   KEYS[2] <tag>:dlq:<channel>
    ARGV[1] channel  ARGV[2] sku  ARGV[3] accepted version (0: nothing pushed, e.g. the SKU is gone)
    ARGV[4 ..] dead-letter entry IDs to delete (at least one)
  Reply: {'ok', raised, deleted}   raised 1 when the recorded version went up.
]]
local function dlq_resolve(keys, args)
  if #keys ~= 2 then
    fail('expected 2 keys (pushed, dead letters), got ' .. #keys)
  end
  local channel = text(args[1], 'channel', MAX_GROUP_LEN)
  local sku = text(args[2], 'sku', MAX_SKU_LEN)
  local version = integer(args[3], 'version', 0, MAX_VERSION)
  local ids = entry_ids(args, 4, 'dead-letter entry ID', 1)
  local tag = tag_of(keys[1], 'pushed', channel)
  if keys[2] ~= tag .. ':dlq:' .. channel then
    fail('dead-letter key ' .. string.format('%q', keys[2]) .. ' is not ' .. tag .. ':dlq:' .. channel)
  end
  local raised = 0
  if version > 0 and version > tonumber(redis.call('HGET', keys[1], sku) or '0') then
    redis.call('HSET', keys[1], sku, version)
    raised = 1
  end
  return {'ok', raised, redis.call('XDEL', keys[2], unpack(ids))}
end

--[[
  stocksync_trim: trim an events stream by MINID, never past an entry some group still needs.
    KEYS[1] <tag>:events
    ARGV[1] retention in ms (keep every entry younger than this, by its ID's time; 0 = no minimum)
  Reply: {'ok', trimmed, minid}
    The bound is the smallest of: now - retention; for every consumer group, its oldest pending entry
    and the entry after its last-delivered ID (entries past it are not yet delivered). With no group,
    only the retention bounds the trim. minid is the bound used ('' when the stream does not exist).
]]
local function trim(keys, args)
  if #keys ~= 1 then
    fail('expected 1 key (events), got ' .. #keys)
  end
  local retention = integer(args[1], 'retention (ms)', 0, MAX_DURATION_MS)
  if not string.find(keys[1], '^%b{}:events$') then
    fail('not an events key: ' .. string.format('%q', keys[1]))
  end
  if redis.call('EXISTS', keys[1]) == 0 then
    return {'ok', 0, ''}
  end
  local now = redis.call('TIME')
  local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
  local bound = string.format('%d', math.max(now_ms - retention, 0)) .. '-0'
  for _, flat in ipairs(redis.call('XINFO', 'GROUPS', keys[1])) do
    local g = pairs_of(flat)
    local need = id_next(g['last-delivered-id'])
    if tonumber(g['pending']) > 0 then
      local oldest = redis.call('XPENDING', keys[1], g['name'])[2]
      if oldest and id_less(oldest, need) then
        need = oldest
      end
    end
    if id_less(need, bound) then
      bound = need
    end
  end
  return {'ok', redis.call('XTRIM', keys[1], 'MINID', bound), bound}
end

--[[
  stocksync_reap_consumers: remove a group's consumers that hold nothing and have been idle a while.
    KEYS[1] <tag>:events
    ARGV[1] group  ARGV[2] minimum idle time in ms  ARGV[3] a consumer never to remove (the caller)
  Reply: {'ok', {removed consumer names}}
  One atomic step: a consumer with pending entries (e.g. one a claim just gave it) is never removed,
  since nothing can claim between the check and XGROUP DELCONSUMER.
]]
local function reap_consumers(keys, args)
  if #keys ~= 1 or not string.find(keys[1] or '', '^%b{}:events$') then
    fail('expected 1 key (events)')
  end
  local group = text(args[1], 'group', MAX_GROUP_LEN)
  local idle = integer(args[2], 'minimum idle (ms)', 0, MAX_DURATION_MS)
  local keep = args[3] or ''
  local removed = {}
  if redis.call('EXISTS', keys[1]) == 0 then
    return {'ok', removed}
  end
  for _, flat in ipairs(redis.call('XINFO', 'CONSUMERS', keys[1], group)) do
    local c = pairs_of(flat)
    if c['name'] ~= keep and tonumber(c['pending']) == 0 and tonumber(c['idle']) >= idle then
      redis.call('XGROUP', 'DELCONSUMER', keys[1], group, c['name'])
      removed[#removed + 1] = c['name']
    end
  end
  return {'ok', removed}
end

--[[
  stocksync_recheck: pushes a channel is owed whatever version it has, kept where every worker of the
  channel sees them, so they outlive the worker that owes them. A push that got no answer (a timeout, a
  dropped connection) may still be applied after a newer one: the current quantity must be pushed again
  once the abandoned request can no longer land. A SKU whose channel name changed is owed one too.
    KEYS[1] <tag>:recheck:<channel>      sorted set: sku -> when the push is owed (ms)
    ARGV[1] channel  ARGV[2] 'due' or 'done'  ARGV[3] a time in ms  ARGV[4..] SKUs (at least one)
  due: each SKU is owed a push at or after ARGV[3]; of two times, the later one is kept.
  done: each SKU owed at or before ARGV[3] is owed no more (callers pass the time the recheck they paid
  was owed); one owed later (another unanswered push since) stays.
  Reply: {'ok', changed}
]]
local function recheck(keys, args)
  if #keys ~= 1 then
    fail('expected 1 key (recheck)')
  end
  local channel = text(args[1], 'channel', MAX_GROUP_LEN)
  tag_of(keys[1], 'recheck', channel)
  local op = args[2]
  if op ~= 'due' and op ~= 'done' then
    fail("operation must be 'due' or 'done', got " .. string.format('%q', op or ''))
  end
  local ms = args[3]
  if type(ms) ~= 'string' or not string.find(ms, '^%d+$') or #ms > 15 then  -- (13 digits: integer() takes 11)
    fail('time (ms) must be a whole number of at most 15 digits, got ' .. (ms and string.format('%q', ms) or 'nothing'))
  end
  if #args < 4 then
    fail('expected at least one SKU')
  end
  for i = 4, #args do
    text(args[i], 'sku', MAX_SKU_LEN)
  end
  local changed = 0
  for i = 4, #args do
    if op == 'due' then
      changed = changed + redis.call('ZADD', keys[1], 'GT', 'CH', ms, args[i])
    else
      local owed = tonumber(redis.call('ZSCORE', keys[1], args[i]))
      if owed and owed <= tonumber(ms) then
        changed = changed + redis.call('ZREM', keys[1], args[i])
      end
    end
  end
  return {'ok', changed}
end

redis.register_function('stocksync_push_claim', guarded(push_claim))
redis.register_function('stocksync_push_done', guarded(push_done))
redis.register_function('stocksync_dead_letter', guarded(dead_letter))
redis.register_function('stocksync_dlq_resolve', guarded(dlq_resolve))
redis.register_function('stocksync_trim', guarded(trim))
redis.register_function('stocksync_reap_consumers', guarded(reap_consumers))
redis.register_function('stocksync_recheck', guarded(recheck))

-- Webhook intake ---------------------------------------------------------------------------------------
--[[
  The webhook intake restocks an order line (a cancellation, a return, a partial cancellation) never
  beyond what was taken, however many distinct restocks of that line arrive at once or from several API
  processes. Before applying a restock with stocksync_adjust under the restock's own reference, it
  reserves the units here, in one key per line. That key lives outside the partitions (a Flipkart
  cancellation names only the line; its SKU is known from the intake's line record), so this function
  touches that one key and nothing else.

    <prefix>:wh:line:<channel>:<line key>:restocks   hash: restock id -> p<units> (reserved) or
                                                     d<units> (applied: the intake HSETs it after the adjust)
]]

local MAX_RESTOCK_ID_LEN = 200
local MAX_LINE_TTL_S = 315360000  -- 10 years

--[[
  stocksync_restock_claim: reserve the units of one restock of an order line, capped at what was taken.
    KEYS[1] <prefix>:wh:line:<channel>:<line key>:restocks
    ARGV[1] restock id (distinct per restock of the line: cancel, r<refund line id>, x<event digest>)
    ARGV[2] units wanted (1 .. 2^31-1)
    ARGV[3] units taken (0 .. 2^31-1)
    ARGV[4] TTL of the key in seconds (1 .. 10 years), renewed by every new reservation
    ARGV[5] units restocked before this key existed (optional, default 0; the intake's old :restocked
            counter, read-only since)
  Reply: {status, units, replayed}
    reserved: units (>= 1) are reserved for this restock: apply them (stocksync_adjust with the restock's
              reference), then mark the restock applied (HSET <key> <id> d<units>)
    done:     this restock was applied before (units as applied): apply nothing
    none:     nothing left to restock (units 0), nothing recorded
    replayed 1 when the restock id was recorded before: its first reservation is returned. A replayed
    reservation may not have been applied yet (the caller stopped in between): apply it again under the
    same reference, which the library makes a no-op if it was.
]]
local function restock_claim(keys, args)
  if #keys ~= 1 or not string.find(keys[1] or '', ':restocks$') then
    fail('expected 1 key (<prefix>:wh:line:<channel>:<line key>:restocks)')
  end
  if #args < 4 or #args > 5 then
    fail('expected 4 or 5 arguments (id, units, taken, ttl, [restocked before]), got ' .. #args)
  end
  local id = text(args[1], 'restock id', MAX_RESTOCK_ID_LEN)
  local wanted = integer(args[2], 'units', 1, MAX_QTY)
  local taken = integer(args[3], 'taken', 0, MAX_QTY)
  local ttl = integer(args[4], 'ttl', 1, MAX_LINE_TTL_S)
  local reserved = args[5] and integer(args[5], 'restocked before', 0, MAX_QTY) or 0
  local key = keys[1]
  local flat = redis.call('HGETALL', key)
  for i = 1, #flat, 2 do
    local state, units = string.match(flat[i + 1], '^([pd])(%d+)$')
    if not state then
      fail('restock record ' .. string.format('%q', flat[i + 1]) .. ' of ' .. string.format('%q', flat[i])
        .. ' is not p<units> or d<units>')
    end
    if flat[i] == id then
      return {state == 'p' and 'reserved' or 'done', tonumber(units), 1}
    end
    reserved = reserved + tonumber(units)
  end
  local units = math.min(wanted, taken - reserved)
  if units <= 0 then
    return {'none', 0, 0}
  end
  redis.call('HSET', key, id, 'p' .. units)
  redis.call('EXPIRE', key, ttl)
  return {'reserved', units, 0}
end

redis.register_function('stocksync_restock_claim', guarded(restock_claim))
