#!lua name=stocksync
--[[
  stocksync: the only code that changes stock.

  Every function touches the keys of one partition (one hash tag, one cluster slot). Keys are passed in,
  never built here, with the exceptions listed under "Derived keys" below; the functions check that the
  keys they are given belong together. Replies are arrays whose first element is a status string
  (stocksync_get, stocksync_stock, stocksync_reservation, stocksync_ref and the no-argument functions
  excepted). Bad arguments get an error reply starting "ERR stocksync:" and change nothing: every check
  runs before the first write.

  Key layout (tag = {<prefix>:<partition>}):
    <tag>:sku:<sku>    hash: available, version, updated_ms, source; committed (units taken by orders not
                       yet shipped) and reserved (units held by live reservations), absent meaning 0.
                       on_hand = available + committed + reserved is never stored: a hash written before
                       0.6 (available only) reads as on_hand = available, committed = reserved = 0, and
                       needs no migration. A bundle's hash also has components ("sku\nqty\n...": the
                       bundle has no stock of its own; its available is derived and kept up to date here),
                       and a component's hash has bundles ("sku\n...": the bundles it is in).
    <tag>:events       stream: one entry per applied change (stock.changed) or rejection (stock.rejected)
    <tag>:idem:<ref>   the reference key: callers pass it (it names the reference, as before 0.5.0). Since
                       0.5.0 it holds a record only for an order whose first outcome is too long for a
                       bucket (a string with a TTL), and is read while records of 0.4 can still exist.
    <tag>:refs:<hhh>   hash, one of 4096 reference buckets per partition (<hhh>: 3 hex digits):
                       field = 16 hex digits of sha1(reference key), value = the unix second of the first
                       use (10 digits) followed by the first outcome (o|available|version, ...).
    <tag>:res:<id>     hash: a reservation (state, exp, src, lines, holds); callers pass it.
    <tag>:hold:<sku>   sorted set: <units>:<reservation id> -> expiry (ms), the live holds on one SKU.
    <tag>:expiries     sorted set: reservation id -> expiry (ms), the partition's held reservations.
    <tag>:bundles      set: the partition's bundles.

  Exactly once, per reference key and partition: the outcome is decided first, then stored with one
  HSETNX into the reference's bucket; if the field was there and is younger than IDEM_TTL_S, nothing
  changes and the stored outcome is replayed. (A reservation is its own record: its key.)

  Derived keys. A call names its SKU, events and reference keys; the library derives from their hash tag
  the reference buckets, a bundle's components (a bundle and its components live in one partition), the
  bundles a component is in, a SKU's holds, and the partition's expiries and bundle set. Redis Cluster
  serves an undeclared key only from the slot of the declared ones; the tag guarantees that it is that
  slot, and the functions refuse keys of another partition. While that slot is being migrated, a derived
  key that has already moved makes the call fail ("Script attempted to access a non local key") before
  its first write: such a call is refused, never applied twice, and once retried after the migration it
  goes to the new node. (Redis checks every key a script touches; declared keys get ASK/TRYAGAIN before
  the script runs.) Derived keys are what let the 0.5 functions keep their keys: a sale of a component
  must update every bundle that contains it, whoever calls it.

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

  Quantities (0.6): available = on_hand - committed - reserved is what G1 guards and what channels list.
  A take (stocksync_decrement, _order) moves units from available to committed; stocksync_ship moves them
  out of committed (and so out of on_hand); stocksync_cancel returns them to available; stocksync_count
  sets on_hand and leaves committed alone; stocksync_adjust and _set change available and on_hand
  together. Every applied change bumps the version by one and appends one event; events of the 0.5
  operations keep their fields, the others add `op` (ship, cancel, count, reserve, commit, release,
  expire, bundle, define).

  Reservations hold units (available -> reserved) until committed (reserved -> committed), released, or
  expired. An expired hold is never counted as reserved by a read (stocksync_get, _stock, _push_claim
  compute it away), is given back by the first writing call on its SKU (a change of its own: op expire),
  by any call that touches its reservation, and by a bounded sweep (stocksync_expire, which workers call
  every second, and a step of it in any writing call of the partition once one is due). Each hold is a
  member of its SKU's hold set, and the call that removes it (ZREM) is the one that gives its units back,
  so they come back once.
]]

local VERSION = '0.6.0'
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
local MAX_BUNDLE_COMPONENTS = 20  -- components of one bundle
local MAX_BUNDLE_QTY = 99999      -- units of one component in one bundle
local MAX_BUNDLES_OF_SKU = 50     -- bundles one SKU is a component of (a change of it updates them all)
local MAX_HOLD_MS = 604800000     -- a reservation's time to live (7 days)
local MAX_EXPIRE_COUNT = 500      -- reservations one stocksync_expire call ends

local REF_BUCKETS = 4096     -- per partition: 3 hex digits of the digest
local REF_INLINE_MAX = 54    -- longest outcome kept in a bucket: 10 + 54 <= 64 bytes keeps the listpack
local SWEEP_COUNT = 128      -- HSCAN COUNT of one sweep step (a listpack bucket comes whole)
local SWEEP_CYCLE_S = IDEM_TTL_S / 2  -- every bucket swept once per this many seconds, if calls come
local SWEEP_STEP_S = SWEEP_CYCLE_S / REF_BUCKETS
local EXPIRE_STEP = 2        -- reservations a writing call ends once some are due (stocksync_expire: more)

-- Errors -----------------------------------------------------------------------------------------------

-- Validation raises {stocksync = message}; guarded() turns it into a clean error reply. A plain
-- error() would carry "script: ..., on @user_function" in the message.
local function fail(message)
  error({stocksync = message})
end

-- The server's clock (TIME), read at most once per call: guarded() forgets it before each call.
local CLOCK = nil
local function clock()
  if not CLOCK then
    CLOCK = redis.call('TIME')
  end
  return CLOCK
end

-- The clock in ms, as a string (ZRANGEBYSCORE bounds, replies) and as a number.
local function now_ms()
  local c = clock()
  local ms = tonumber(c[1]) * 1000 + math.floor(tonumber(c[2]) / 1000)
  return ms, string.format('%d', ms)
end

local function guarded(fn)
  return function(keys, args)
    CLOCK = nil
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
    h = {events = tag .. ':events', idem = tag .. ':idem:', refs = tag .. ':refs:', sku = tag .. ':sku:',
      hold = tag .. ':hold:', res = tag .. ':res:', expiries = tag .. ':expiries', bundles = tag .. ':bundles'}
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
  local now = clock()[1]
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
  local now = clock()[1]
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
  sweep(tag, clock())
  return nil
end

-- SKU state ---------------------------------------------------------------------------------------------

-- "a\nb\n..." as {a, b, ...}; "sku\nqty\n..." as {{sku, qty}, ...}.
local function names_in(text)
  local out = {}
  for name in string.gmatch(text or '', '[^\n]+') do
    out[#out + 1] = name
  end
  return out
end

local function parts_in(text)
  local out = {}
  for sku, qty in string.gmatch(text or '', '([^\n]+)\n(%d+)') do
    out[#out + 1] = {sku, tonumber(qty)}
  end
  return out
end

-- The holds on a SKU whose reservation has expired: their units and reservation ids (never applied here).
local function expired_holds(tag, sku)
  local _, now = now_ms()
  local members = redis.call('ZRANGEBYSCORE', heads_of(tag).hold .. sku, '-inf', now)
  local units, ids = 0, {}
  for i, member in ipairs(members) do
    local n, id = string.match(member, '^(%d+):(.*)$')
    units, ids[i] = units + tonumber(n), id
  end
  return units, ids
end

-- A SKU as the functions hold it while they change it; nil when it does not exist (every SKU has a
-- version). `expired`: units of expired holds still counted in reserved (avail() counts them back).
local function load(tag, sku)
  local key = heads_of(tag).sku .. sku
  local h = redis.call('HMGET', key, 'available', 'version', 'committed', 'reserved', 'components', 'bundles')
  if not h[2] then
    return nil
  end
  local s = {key = key, sku = sku, available = tonumber(h[1]), version = tonumber(h[2]),
    committed = tonumber(h[3] or 0), reserved = tonumber(h[4] or 0), components = h[5] or nil,
    bundles = h[6] or nil, expired = 0}
  s.committed0, s.reserved0 = s.committed, s.reserved
  if s.reserved > 0 then
    s.expired, s.expired_ids = expired_holds(tag, sku)
  end
  return s
end

-- A SKU that does not exist yet (stocksync_set and _count create it, stocksync_bundle_set a bundle).
local function blank(tag, sku)
  return {key = heads_of(tag).sku .. sku, sku = sku, available = 0, version = 0, committed = 0, reserved = 0,
    committed0 = 0, reserved0 = 0, expired = 0}
end

-- What a read counts as available: expired holds are available again, applied or not.
local function avail(s)
  return s.available + s.expired
end

local function is_bundle_error(sku)
  fail(string.format('%q', sku) .. ' is a bundle: it has no stock of its own (change its components)')
end

-- A call's working set: the SKUs it loaded (each once), and the components whose quantity changed (the
-- bundles they are in get their quantity again at the end: refresh_bundles).
local function new_plan(tag, events_key, source, ref)
  return {tag = tag, events = events_key, source = source, ref = ref, states = {}, changed = {}, forced = {}}
end

local function state(plan, sku)
  local s = plan.states[sku]
  if s == nil then
    s = load(plan.tag, sku) or false
    plan.states[sku] = s
  end
  return s or nil
end

-- Records a changed SKU and appends its event: version + 1. The events of the 0.5 operations (op nil)
-- keep their fields; the others add `op`. committed and reserved are written only when they changed
-- (absent means 0, and a SKU never taken or held stays as small as before 0.6). The entry ID's first
-- part is the server's clock in ms when the change committed (monotonic per stream), so it is the
-- event's timestamp and the SKU's updated_ms: no ts field.
local function emit(plan, s, delta, op, source, ref)
  s.version = s.version + 1
  source, ref = source or plan.source, ref or plan.ref
  local a, v = tostring(s.available), tostring(s.version)
  local id
  if op then
    id = redis.call('XADD', plan.events, '*', 'type', 'stock.changed', 'sku', s.sku, 'available', a,
      'delta', delta, 'version', v, 'source', source, 'ref', ref, 'op', op)
  else
    id = redis.call('XADD', plan.events, '*', 'type', 'stock.changed', 'sku', s.sku, 'available', a,
      'delta', delta, 'version', v, 'source', source, 'ref', ref)
  end
  local fields = {'available', a, 'version', v, 'updated_ms', string.sub(id, 1, string.find(id, '-', 1, true) - 1),
    'source', source}
  if s.committed ~= s.committed0 then
    fields[#fields + 1], fields[#fields + 2], s.committed0 = 'committed', s.committed, s.committed
  end
  if s.reserved ~= s.reserved0 then
    fields[#fields + 1], fields[#fields + 2], s.reserved0 = 'reserved', s.reserved, s.reserved
  end
  redis.call('HSET', s.key, unpack(fields))
  if delta ~= 0 and s.bundles then
    plan.changed[#plan.changed + 1] = s
  end
end

local function flag(plan, sku, available, version, delta, reason, op)
  if op then
    redis.call('XADD', plan.events, '*', 'type', 'stock.rejected', 'sku', sku, 'available', available,
      'delta', delta, 'version', version, 'source', plan.source, 'ref', plan.ref, 'reason', reason, 'op', op)
  else
    redis.call('XADD', plan.events, '*', 'type', 'stock.rejected', 'sku', sku, 'available', available,
      'delta', delta, 'version', version, 'source', plan.source, 'ref', plan.ref, 'reason', reason)
  end
end

-- Before a call writes a SKU: the holds of expired reservations go back to available, as a change of
-- their own (op expire, source expiry, ref the reservations). Their members leave the hold set here, so
-- whoever ends those reservations later finds them gone and gives nothing back twice.
local function settle(plan, s)
  if s.expired == 0 then
    return
  end
  local _, now = now_ms()
  redis.call('ZREMRANGEBYSCORE', heads_of(plan.tag).hold .. s.sku, '-inf', now)
  local units = s.expired
  s.available, s.reserved, s.expired = s.available + units, s.reserved - units, 0
  emit(plan, s, units, 'expire', 'expiry', string.sub(table.concat(s.expired_ids, ','), 1, MAX_REF_LEN))
end

-- Bundles --------------------------------------------------------------------------------------------

-- A bundle's quantity: the fewest whole bundles its components' available units make.
local function derived(plan, bundle)
  local q = nil
  for _, part in ipairs(parts_in(bundle.components)) do
    local c = state(plan, part[1])
    local n = c and math.floor(avail(c) / part[2]) or 0
    if not q or n < q then
      q = n
    end
  end
  return q or 0
end

-- After a call's changes: every bundle of a changed component gets its quantity again, with one event
-- (op bundle) when it changed, or always for a bundle this call sold or held (plan.forced).
local function refresh_bundles(plan)
  local seen, i = {}, 1
  while plan.changed[i] do
    for _, b in ipairs(names_in(plan.changed[i].bundles)) do
      local bundle = not seen[b] and state(plan, b)
      seen[b] = true
      if bundle and bundle.components then
        local q = derived(plan, bundle)
        if q ~= bundle.available or plan.forced[b] then
          local delta = q - bundle.available
          bundle.available = q
          emit(plan, bundle, delta, 'bundle')
        end
      end
    end
    i = i + 1
  end
end

-- What a channel lists of a SKU now, and its version (nil when it does not exist): a bundle's quantity
-- from its components' available units, expired holds counted as available (reads never count them).
local function listed(plan, sku)
  local s = state(plan, sku)
  if not s then
    return nil, nil
  end
  if s.components then
    return derived(plan, s), s.version
  end
  return avail(s), s.version
end

-- The units the lines need of each SKU: a bundle line needs qty x each of its components; lines that
-- need one SKU add up. Answers needs {sku -> units} and the SKUs in the order first needed, or nil and
-- the unknown SKU (a line's, or a bundle's component).
local function needs_of(plan, skus, qtys)
  local need, order = {}, {}
  local function add(sku, units)
    if not need[sku] then
      need[sku], order[#order + 1] = 0, sku
    end
    need[sku] = need[sku] + units
  end
  for i, sku in ipairs(skus) do
    local s = state(plan, sku)
    if not s then
      return nil, sku
    end
    if s.components then
      for _, part in ipairs(parts_in(s.components)) do
        if not state(plan, part[1]) then
          return nil, part[1]
        end
        add(part[1], qtys[i] * part[2])
      end
    else
      add(sku, qtys[i])
    end
  end
  return need, order
end

-- Whether every needed SKU has the units; the set of those that do not.
local function shortages(plan, need, order)
  local short, any = {}, false
  for _, sku in ipairs(order) do
    if avail(plan.states[sku]) < need[sku] then
      short[sku], any = true, true
    end
  end
  return any, short
end

-- Takes what the lines need, into `field` (committed for a sale, reserved for a hold): every needed SKU
-- changes (its event: op nil for a sale, as in 0.5), then every bundle of the lines (forced) and of the
-- changed components gets its quantity again. A bundle line also counts its own units in `field`.
local function take(plan, skus, qtys, need, order, field, op)
  for _, sku in ipairs(order) do
    local s = plan.states[sku]
    settle(plan, s)
    s.available, s[field] = s.available - need[sku], s[field] + need[sku]
    emit(plan, s, -need[sku], op)
  end
  for i, sku in ipairs(skus) do
    local s = plan.states[sku]
    if s.components then
      if field == 'committed' then  -- (a bundle's committed: its units to ship; its holds are its components')
        s.committed = s.committed + qtys[i]
      end
      plan.forced[sku] = true
      plan.changed[#plan.changed + 1] = {bundles = sku}
    end
  end
  refresh_bundles(plan)
end

-- The stock.rejected events of lines that could not be covered: a line whose SKU (a bundle: one of its
-- components) is short.
local function flag_short(plan, skus, qtys, short, op)
  for i, sku in ipairs(skus) do
    local s = plan.states[sku]
    local is_short = short[sku]
    if s.components then
      for _, part in ipairs(parts_in(s.components)) do
        is_short = is_short or short[part[1]]
      end
    end
    if is_short then
      local available, version = listed(plan, sku)
      flag(plan, sku, available, version, -qtys[i], 'insufficient', op)
    end
  end
end

-- Reservations: ending them ------------------------------------------------------------------------------

-- The partition's next known expiry (ms) in this Lua state: a writing call ends a few due reservations
-- once it has passed (expire_step). Unknown after a restart until stocksync_expire (workers call it every
-- second) or a new reservation sets it; reads never count an expired hold meanwhile.
local hold_due, hold_due_n = {}, 0
local function due_at(tag, ms)
  if hold_due[tag] == nil then
    if hold_due_n >= TAG_CACHE_SIZE then
      hold_due, hold_due_n = {}, 0
    end
    hold_due_n = hold_due_n + 1
  end
  hold_due[tag] = ms
end

local function reservation_of(tag, id)
  local r = redis.call('HMGET', heads_of(tag).res .. id, 'state', 'exp', 'src', 'lines', 'holds')
  if not r[1] then
    return nil
  end
  return {key = heads_of(tag).res .. id, id = id, state = r[1], exp = tonumber(r[2] or 0), src = r[3] or '',
    lines = r[4] or '', holds = r[5] or ''}
end

-- Ends a held reservation: each of its holds still in its SKU's hold set goes back to available (op
-- release or expire) -- the ZREM that removes it is the one that gives it back, so never twice -- and
-- its state becomes `to`; the record stays for replays as long as references are remembered.
local function end_reservation(plan, r, to, op)
  local h = heads_of(plan.tag)
  for _, part in ipairs(parts_in(r.holds)) do
    if redis.call('ZREM', h.hold .. part[1], part[2] .. ':' .. r.id) == 1 then
      local s = state(plan, part[1])  -- (loaded after the ZREM: its expired units do not count this hold)
      if s then
        settle(plan, s)
        s.available, s.reserved = s.available + part[2], s.reserved - part[2]
        emit(plan, s, part[2], op, plan.source or r.src, r.id)
      end
    end
  end
  refresh_bundles(plan)
  redis.call('HSET', r.key, 'state', to)
  redis.call('PEXPIRE', r.key, IDEM_TTL_S * 1000)
  redis.call('ZREM', h.expiries, r.id)
  r.state = to
end

-- Ends up to `count` reservations of the partition whose time has passed, each with a plan of its own;
-- answers how many, and the next expiry (ms, 0: none).
local function expire_due(tag, events_key, count)
  local h = heads_of(tag)
  local _, now = now_ms()
  local ids = redis.call('ZRANGEBYSCORE', h.expiries, '-inf', now, 'LIMIT', 0, count)
  local ended = 0
  for _, id in ipairs(ids) do
    local r = reservation_of(tag, id)
    if r and r.state == 'held' then
      end_reservation(new_plan(tag, events_key, 'expiry', id), r, 'expired', 'expire')
      ended = ended + 1
    else
      redis.call('ZREM', h.expiries, id)
    end
  end
  local next_due = redis.call('ZRANGE', h.expiries, 0, 0, 'WITHSCORES')[2]
  next_due = next_due and tonumber(next_due) or 0
  due_at(tag, next_due > 0 and next_due or false)
  return ended, next_due
end

-- The sweep's step in a writing call: once the partition's next known expiry has passed, end a few.
local function expire_step(tag, events_key)
  local due = hold_due[tag]
  if due and now_ms() >= due then
    expire_due(tag, events_key, EXPIRE_STEP)
  end
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

-- The reply of a call that moved units between quantities (ship, cancel): the record adds the units.
local function replay_moved(record, ref)
  local code, available, version, units = string.match(record, '^(%a)|(%-?%d+)|(%d+)|(%d+)$')
  if not code then
    reused(ref)
  end
  return {CODE_STATUS[code], tonumber(available), tonumber(version), 1, tonumber(units)}
end

-- A sale of `qty` bundles (stocksync_decrement on a bundle's key): its components, all or nothing.
local function sell_bundle(plan, idem_key, sku, qty)
  local first = recall(plan.tag, idem_key)
  if first then
    return replay_single(first, plan.ref)
  end
  local need, order = needs_of(plan, {sku}, {qty})
  if not need then
    return {'unknown_sku', 0, 0, 0}
  end
  local any, short = shortages(plan, need, order)
  if any then
    flag_short(plan, {sku}, {qty}, short)
  else
    take(plan, {sku}, {qty}, need, order, 'committed')
  end
  local status = any and 'insufficient' or 'ok'
  local available, version = listed(plan, sku)
  remember(plan.tag, idem_key, STATUS_CODE[status] .. '|' .. available .. '|' .. version)
  return {status, available, version, 0}
end

-- A change of one SKU by delta, refused (insufficient) if it would take available below zero. A sale
-- (stocksync_decrement) moves the units to committed; an adjustment changes available and on_hand.
-- s: the SKU as loaded (a plain one: no components); plan: the call's.
local function change_sku(plan, idem_key, s, delta, sale)
  local after, version = avail(s) + delta, s.version
  if after > MAX_QTY then
    fail('available would exceed ' .. MAX_QTY)
  end
  local status = after < 0 and 'insufficient' or 'ok'
  if status == 'ok' then
    version = version + (s.expired > 0 and 2 or 1)  -- (expired holds first: a change of their own)
  else
    after = avail(s)
  end
  -- Numbers as strings once, for the record, the event and the hash alike.
  local a, v = tostring(after), tostring(version)
  local first = remember(plan.tag, idem_key, STATUS_CODE[status] .. '|' .. a .. '|' .. v)
  if first then
    return replay_single(first, plan.ref)
  end
  if status == 'ok' then
    settle(plan, s)
    s.available = after
    if sale then
      s.committed = s.committed - delta
    end
    emit(plan, s, delta)
    refresh_bundles(plan)
  else
    flag(plan, s.sku, a, v, tostring(delta), 'insufficient')
  end
  return {status, after, version, 0}
end

-- The same for a SKU in no bundle and with nothing reserved (most calls): no working set, one HSET.
-- h: its HMGET (available, version, committed, reserved, components, bundles).
local function change_plain(keys, tag, sku, h, delta, source, ref, sale)
  local available, version = tonumber(h[1]), tonumber(h[2])
  local after = available + delta
  if after > MAX_QTY then
    fail('available would exceed ' .. MAX_QTY)
  end
  local status = 'ok'
  if after < 0 then
    status, after = 'insufficient', available
  else
    version = version + 1
  end
  local a, v, d = tostring(after), tostring(version), tostring(delta)
  local first = remember(tag, keys[3], STATUS_CODE[status] .. '|' .. a .. '|' .. v)
  if first then
    return replay_single(first, ref)
  end
  if status == 'ok' then
    local id = redis.call('XADD', keys[2], '*', 'type', 'stock.changed', 'sku', sku, 'available', a, 'delta', d,
      'version', v, 'source', source, 'ref', ref)
    local ms = string.sub(id, 1, string.find(id, '-', 1, true) - 1)
    if sale then
      redis.call('HSET', keys[1], 'available', a, 'version', v, 'updated_ms', ms, 'source', source,
        'committed', tonumber(h[3] or 0) - delta)
    else
      redis.call('HSET', keys[1], 'available', a, 'version', v, 'updated_ms', ms, 'source', source)
    end
  else
    redis.call('XADD', keys[2], '*', 'type', 'stock.rejected', 'sku', sku, 'available', a, 'delta', d,
      'version', v, 'source', source, 'ref', ref, 'reason', 'insufficient')
  end
  return {status, after, version, 0}
end

-- stocksync_decrement and _adjust on one SKU (a sale of a bundle: its components, sell_bundle).
local function change_by(keys, tag, sku, delta, source, ref, sale)
  local h = redis.call('HMGET', keys[1], 'available', 'version', 'committed', 'reserved', 'components', 'bundles')
  local reply
  if not h[2] then
    local first = recall(tag, keys[3])
    return first and replay_single(first, ref) or {'unknown_sku', 0, 0, 0}
  elseif not h[5] and not h[6] and tonumber(h[4] or 0) == 0 then
    reply = change_plain(keys, tag, sku, h, delta, source, ref, sale)
  else
    local plan = new_plan(tag, keys[2], source, ref)
    local s = state(plan, sku)
    if s.components and not sale then
      is_bundle_error(sku)
    end
    reply = s.components and sell_bundle(plan, keys[3], sku, -delta) or change_sku(plan, keys[3], s, delta, sale)
  end
  expire_step(tag, keys[2])
  return reply
end

-- Functions ---------------------------------------------------------------------------------------------

--[[
  stocksync_decrement: take qty units of a SKU (a sale: they move from available to committed), or
  nothing if fewer are available. On a bundle's key: qty bundles, i.e. qty x each component, all or none.
    KEYS[1] <tag>:sku:<sku>   KEYS[2] <tag>:events   KEYS[3] <tag>:idem:<ref>
    ARGV[1] qty (1 .. 2^31-1)  ARGV[2] source (channel or service)  ARGV[3] ref (idempotency key)
  Reply: {status, available, version, replayed}
    status ok | insufficient | unknown_sku; available and version after the call (unchanged unless ok;
    a bundle's: its derived quantity and version);
    replayed 1 when ref was seen before: the first outcome is returned and nothing changes.
  Events: ok -> stock.changed (a bundle: one per component, then op bundle for every bundle of those
  components); insufficient -> stock.rejected (reason insufficient); unknown_sku -> none and the
  reference is not remembered, so the same call can succeed once the SKU exists.
  Also writes: the reference's bucket <tag>:refs:<hhh> (see the header), and one sweep step.
]]
local function decrement(keys, args)
  local tag, sku, source, ref = mutation(keys, args)
  local qty = integer(args[1], 'qty', 1, MAX_QTY)
  return change_by(keys, tag, sku, -qty, source, ref, true)
end

--[[
  stocksync_adjust: add (restock, return) or remove (damage, loss) units: available and on_hand change
  together, committed does not.
    KEYS as stocksync_decrement (not a bundle's: it has no stock of its own).
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
  return change_by(keys, tag, sku, delta, source, ref, false)
end

local function expected_version(args, at)
  if #args > at then
    fail('expected at most ' .. at .. ' arguments, got ' .. #args)
  end
  return args[at] ~= nil and integer(args[at], 'expected_version', 0, MAX_VERSION) or nil
end

--[[
  stocksync_set: set the available quantity; creates the SKU if it does not exist. on_hand follows
  (available + committed + reserved). To record a warehouse count, use stocksync_count.
    KEYS as stocksync_decrement (not a bundle's).
    ARGV[1] available (0 .. 2^31-1)  ARGV[2] source  ARGV[3] ref
    ARGV[4] expected_version (optional; 0 = the SKU must not exist yet)
  Reply: {status, available, version, replayed}, status ok | conflict.
  conflict: expected_version differs from the current version; nothing changes, no event, and the
  reply carries the current available and version. Every applied set bumps the version, even to the
  same quantity, so that channels are pushed again.
]]
-- What stocksync_set and stocksync_count read first: their arguments (ARGV[1] the quantity named
-- `field`, ARGV[4] the optional expected version), the plan, and the SKU's state (blank if it does not
-- exist yet; a bundle is refused: it has no stock of its own to set or count).
local function plain_sku(keys, args, field)
  local tag, sku, source, ref = mutation(keys, args)
  local value = integer(args[1], field, 0, MAX_QTY)
  local expected = expected_version(args, 4)
  local plan = new_plan(tag, keys[2], source, ref)
  local s = state(plan, sku)
  if s and s.components then
    is_bundle_error(sku)
  end
  return tag, sku, ref, value, expected, plan, s or blank(tag, sku)
end

-- available becomes target: the change's event (op: nil for a set) and the bundles it moves.
local function reset_available(plan, s, target, op)
  settle(plan, s)
  local delta = target - s.available
  s.available = target
  emit(plan, s, delta, op)
  refresh_bundles(plan)
end

local function set(keys, args)
  local tag, _, ref, target, expected, plan, s = plain_sku(keys, args, 'available')
  local conflict = expected and expected ~= s.version
  local record = conflict and ('c|' .. avail(s) .. '|' .. s.version)
    or ('o|' .. target .. '|' .. (s.version + (s.expired > 0 and 2 or 1)))
  local first = remember(tag, keys[3], record)
  if first then
    return replay_single(first, ref)
  end
  if conflict then
    return {'conflict', avail(s), s.version, 0}
  end
  reset_available(plan, s, target)
  expire_step(tag, keys[2])
  return {'ok', target, s.version, 0}
end

--[[
  stocksync_count: record a warehouse count: on_hand becomes the count, committed (units of orders not
  yet shipped) stays, so available = count - committed - reserved. Creates the SKU if it does not exist.
    KEYS as stocksync_decrement (not a bundle's).
    ARGV[1] on_hand (0 .. 2^31-1)  ARGV[2] source  ARGV[3] ref  ARGV[4] expected_version (optional)
  Reply: {status, available, version, replayed}, status ok | conflict | insufficient.
  insufficient: the count is below committed + reserved (units already promised are not there): nothing
  changes but a stock.rejected event (reason below_committed, delta: the change of available it would
  have made); cancel or ship what cannot be covered, then count again. Event: op count.
]]
local function count(keys, args)
  local tag, sku, ref, on_hand, expected, plan, s = plain_sku(keys, args, 'on_hand')
  local first = recall(tag, keys[3])
  if first then
    return replay_single(first, ref)
  end
  local target = on_hand - s.committed - (s.reserved - s.expired)
  local status = (expected and expected ~= s.version) and 'conflict' or (target < 0 and 'insufficient' or 'ok')
  if status == 'insufficient' then
    flag(plan, sku, avail(s), s.version, target - avail(s), 'below_committed', 'count')
  elseif status == 'ok' then
    reset_available(plan, s, target, 'count')
  end
  remember(tag, keys[3], STATUS_CODE[status] .. '|' .. avail(s) .. '|' .. s.version)
  expire_step(tag, keys[2])
  return {status, avail(s), s.version, 0}
end

-- qty units of a bundle or SKU moved out of committed (ship) or back to available (cancel): for a
-- bundle, its own committed and qty x each component's. Answers the units the SKU had committed.
local function move_committed(plan, s, qty, op)
  if not s.components then
    settle(plan, s)
    local units = math.min(qty, s.committed)
    s.committed = s.committed - units
    local delta = op == 'cancel' and qty or 0
    s.available = s.available + delta
    if units > 0 or delta > 0 then
      emit(plan, s, delta, op)
    end
    return units
  end
  local units = math.min(qty, s.committed)
  for _, part in ipairs(parts_in(s.components)) do
    local c = state(plan, part[1])
    if c then
      move_committed(plan, c, (op == 'cancel' and qty or units) * part[2], op)
    end
  end
  s.committed = s.committed - units
  redis.call('HSET', s.key, 'committed', s.committed)  -- (bookkeeping of the bundle's open units)
  s.committed0 = s.committed
  return units
end

local function ship_or_cancel(keys, args, op)
  local tag, sku, source, ref = mutation(keys, args)
  local qty = integer(args[1], 'qty', 1, MAX_QTY)
  local first = recall(tag, keys[3])
  if first then
    return replay_moved(first, ref)
  end
  local plan = new_plan(tag, keys[2], source, ref)
  local s = state(plan, sku)
  if not s then
    return {'unknown_sku', 0, 0, 0, 0}
  end
  local units = move_committed(plan, s, qty, op)
  refresh_bundles(plan)
  local available, version = listed(plan, sku)
  remember(tag, keys[3], 'o|' .. available .. '|' .. version .. '|' .. units)
  expire_step(tag, keys[2])
  return {'ok', available, version, 0, units}
end

--[[
  stocksync_ship: qty units of an order line left the warehouse: they leave committed and on_hand;
  available does not change. On a bundle's key: qty bundles (their components, qty x each).
    KEYS as stocksync_decrement.  ARGV[1] qty (1 .. 2^31-1)  ARGV[2] source  ARGV[3] ref
  Reply: {status, available, version, replayed, shipped}, status ok | unknown_sku.
    shipped: the units taken out of committed, at most what the SKU has committed. Units of orders taken
    before library 0.6 were never committed (they left on_hand when taken): shipping them changes
    nothing more. Event: op ship (delta 0), when shipped > 0.
]]
local function ship(keys, args)
  return ship_or_cancel(keys, args, 'ship')
end

--[[
  stocksync_cancel: qty units of an order line that will not ship (a cancellation before shipping) go
  back to available. On a bundle's key: qty bundles.
    KEYS as stocksync_decrement.  ARGV[1] qty (1 .. 2^31-1)  ARGV[2] source  ARGV[3] ref
  Reply: {status, available, version, replayed, from_committed}, status ok | unknown_sku.
    available grows by qty; from_committed of them come out of committed (at most what the SKU has
    committed), the rest is restocked onto on_hand, as 0.5 restocked a line taken before library 0.6
    (its units had left on_hand). Event: op cancel (delta qty).
]]
local function cancel(keys, args)
  return ship_or_cancel(keys, args, 'cancel')
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

-- The lines' SKUs and quantities (KEYS[first..], ARGV[first..]): one partition, each SKU once.
local function lines_of(keys, args, first, n)
  local skus, qtys, seen, tag = {}, {}, {}, nil
  for i = 1, n do
    local line_tag, sku = sku_of(keys[first + i - 1])
    if tag and line_tag ~= tag then
      fail('line ' .. i .. ' is in partition ' .. line_tag .. ', not ' .. tag)
    end
    tag = line_tag
    if seen[sku] then
      fail('SKU ' .. string.format('%q', sku) .. ' appears twice; merge the lines')
    end
    seen[sku] = true
    skus[i] = sku
    qtys[i] = integer(args[first + i - 1], 'qty of line ' .. i, 1, MAX_QTY)
  end
  return tag, skus, qtys
end

-- Each line's {sku, available, version} as a channel would list it now (unknown: false, false).
local function line_states(plan, skus)
  local out = {}
  for i, sku in ipairs(skus) do
    local available, version = listed(plan, sku)
    out[i] = {sku, available or false, version or false}
  end
  return out
end

--[[
  stocksync_order: take several lines of one partition all-or-nothing under one reference (a sale: the
  units move to committed). A line may be a bundle (qty x each component); lines needing one SKU add up.
    KEYS[1] <tag>:events   KEYS[2] <tag>:idem:<ref>   KEYS[3..n+2] <tag>:sku:<sku> (n lines, SKUs distinct)
    ARGV[1] source  ARGV[2] ref  ARGV[3..n+2] qty of each line, in the order of the SKU keys
  Reply: {status, lines, replayed}, lines = {{sku, available, version}, ...} in the order given.
    ok: every line taken, one stock.changed per SKU taken from, each such SKU's version + 1 (and op
      bundle events for the bundles of those SKUs).
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
  local tag, skus, qtys = lines_of(keys, args, 3, n)
  same_partition(tag, events_key, idem_key)
  local plan = new_plan(tag, events_key, source, ref)
  local first = recall(tag, idem_key)
  if first then
    return replay_order(first, skus, ref)
  end
  local need, order_of = needs_of(plan, skus, qtys)
  if not need then
    return {'unknown_sku', line_states(plan, skus), 0}
  end
  local any, short = shortages(plan, need, order_of)
  if any then
    flag_short(plan, skus, qtys, short)
  else
    take(plan, skus, qtys, need, order_of, 'committed')
  end
  local lines, parts = line_states(plan, skus), {}
  for i, line in ipairs(lines) do
    parts[i] = line[2] .. ',' .. line[3]
  end
  local status = any and 'insufficient' or 'ok'
  remember(tag, idem_key, STATUS_CODE[status] .. '|' .. table.concat(parts, ';'))
  expire_step(tag, events_key)
  return {status, lines, 0}
end

--[[
  stocksync_get (FCALL_RO): read one SKU.
    KEYS[1] <tag>:sku:<sku>
  Reply: {available, reserved, version, updated_ms, source}, or an empty array for an unknown SKU.
    Holds of expired reservations are counted as available, not reserved. A bundle: its derived
    quantity, reserved 0. (stocksync_stock answers on_hand and committed too.)
]]
-- What stocksync_get and stocksync_stock read: nil for an unknown SKU, else what the SKU lists, its
-- version, its state (see new_plan), its live holds, and when and by whom it was last changed.
local function read_one(keys)
  if #keys ~= 1 then
    fail('expected 1 key (sku), got ' .. #keys)
  end
  local tag, sku = sku_of(keys[1])
  local plan = new_plan(tag)
  local available, version = listed(plan, sku)
  if not version then
    return nil
  end
  local s = plan.states[sku]
  local h = redis.call('HMGET', keys[1], 'updated_ms', 'source')
  return {available = available, version = version, state = s, reserved = s.reserved - s.expired,
    updated_ms = tonumber(h[1]), source = h[2]}
end

local function get(keys, args)
  local r = read_one(keys)
  if not r then
    return {}
  end
  return {r.available, r.reserved, r.version, r.updated_ms, r.source}
end

local function flat_parts(text)
  local out = {}
  for _, part in ipairs(parts_in(text)) do
    out[#out + 1], out[#out + 2] = part[1], part[2]
  end
  return out
end

--[[
  stocksync_stock (FCALL_RO): one SKU's quantities.
    KEYS[1] <tag>:sku:<sku>
  Reply: {available, on_hand, committed, reserved, version, updated_ms, source, components, bundles}, or an
    empty array for an unknown SKU. on_hand = available + committed + reserved; holds of expired
    reservations count as available. components: {sku, qty, ...} for a bundle (its on_hand is nil:
    it has no stock of its own; committed: its units taken, not yet shipped), else empty; bundles:
    the bundles the SKU is a component of.
]]
local function stock(keys, args)
  local r = read_one(keys)
  if not r then
    return {}
  end
  local s = r.state
  local on_hand = not s.components and r.available + s.committed + r.reserved or false
  return {r.available, on_hand, s.committed, r.reserved, r.version, r.updated_ms, r.source,
    flat_parts(s.components), names_in(s.bundles)}
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


-- Bundles: definitions ---------------------------------------------------------------------------------

-- The bundles a component is in, with `bundle` added or removed.
local function with_bundle(list, bundle, add)
  local out = {}
  for _, b in ipairs(names_in(list)) do
    if b ~= bundle then
      out[#out + 1] = b
    end
  end
  if add then
    if #out >= MAX_BUNDLES_OF_SKU then
      fail('a SKU can be in at most ' .. MAX_BUNDLES_OF_SKU .. ' bundles')
    end
    out[#out + 1] = bundle
  end
  return table.concat(out, '\n')
end

local function no_newline(sku)
  if string.find(sku, '\n', 1, true) then
    fail('SKU ' .. string.format('%q', sku) .. ' has a newline: it cannot be in a bundle or a reservation')
  end
  return sku
end

-- Writes a component's list of bundles (none: the field goes).
local function write_bundles(s, list)
  s.bundles = list ~= '' and list or nil
  if s.bundles then
    redis.call('HSET', s.key, 'bundles', s.bundles)
  else
    redis.call('HDEL', s.key, 'bundles')
  end
end

-- The checks of a bundle's definition: the components exist in its partition, are not bundles, and
-- the bundle itself is no component and holds no stock of its own.
local function check_bundle(plan, b, skus)
  if b and b.bundles then
    fail(string.format('%q', b.sku) .. ' is a component of a bundle: a bundle cannot be a component')
  end
  if b and not b.components and (b.available ~= 0 or b.committed ~= 0 or b.reserved ~= 0) then
    fail(string.format('%q', b.sku) .. ' has stock of its own (available ' .. b.available .. ', committed '
      .. b.committed .. ', reserved ' .. b.reserved .. '): bring it to 0 before it becomes a bundle')
  end
  for _, sku in ipairs(skus) do
    local c = state(plan, sku)
    if not c then
      fail('component ' .. string.format('%q', sku) .. ' does not exist in partition ' .. plan.tag
        .. ' (a bundle and its components must share a partition: see docs/keys.md, pinning)')
    end
    if c.components then
      fail('component ' .. string.format('%q', sku) .. ' is a bundle: bundles do not nest')
    end
    local of = names_in(c.bundles)
    if #of >= MAX_BUNDLES_OF_SKU and not string.find('\n' .. c.bundles .. '\n', '\n' .. plan.sku .. '\n', 1, true) then
      fail('component ' .. string.format('%q', sku) .. ' is in ' .. #of .. ' bundles already, the most a SKU can be in')
    end
  end
end

-- Writes a bundle's definition: the components' lists of bundles, then its quantity (op define).
local function define(plan, b, skus, definition)
  local old, new = {}, {}
  for _, part in ipairs(parts_in(b.components)) do
    old[part[1]] = true
  end
  for _, c in ipairs(skus) do
    new[c] = true
  end
  for c, _ in pairs(old) do
    local s = not new[c] and state(plan, c)
    if s then
      write_bundles(s, with_bundle(s.bundles, b.sku, false))
    end
  end
  for _, c in ipairs(skus) do
    local s = state(plan, c)
    if not old[c] then
      write_bundles(s, with_bundle(s.bundles, b.sku, true))
    end
  end
  b.components = definition
  redis.call('HSET', b.key, 'components', definition)
  local q = derived(plan, b)
  local delta = q - b.available
  b.available = q
  emit(plan, b, delta, 'define')
  redis.call('SADD', heads_of(plan.tag).bundles, b.sku)
  return {'ok', q, b.version}
end

--[[
  stocksync_bundle_set: define (or redefine) a bundle: a SKU with no stock of its own whose quantity is
  the fewest whole bundles its components make. A multipack is a bundle of one component.
    KEYS[1] <tag>:events   KEYS[2] <tag>:sku:<bundle>   KEYS[3..n+2] <tag>:sku:<component> (1 .. 20,
    distinct, existing, not bundles, same partition)
    ARGV[1] source  ARGV[2] ref (carried by the event)  ARGV[3..n+2] units of each component (1 .. 99999)
  Reply: {status, available, version}   status ok | unchanged (the same definition: nothing changes).
  Refused (error): the bundle is a component, has stock of its own (a SKU becomes a bundle only at 0),
  or has committed units (redefine it once they are shipped or cancelled).
  Writes: the bundle's hash (components, its quantity; op define event), the components' bundles lists,
  <tag>:bundles.
]]
local function bundle_set(keys, args)
  local n = #keys - 2
  if n < 1 or n > MAX_BUNDLE_COMPONENTS then
    fail('a bundle needs 1 to ' .. MAX_BUNDLE_COMPONENTS .. ' components, got ' .. n)
  end
  if #args ~= n + 2 then
    fail('expected ' .. n .. ' quantities for ' .. n .. ' component keys, got ' .. (#args - 2))
  end
  local source, ref = text(args[1], 'source', MAX_SOURCE_LEN), text(args[2], 'ref', MAX_REF_LEN)
  local tag, sku = sku_of(keys[2])
  events_of(tag, keys[1])
  no_newline(sku)
  local ctag, skus, qtys = lines_of(keys, args, 3, n)
  if ctag ~= tag then
    fail('components are in partition ' .. ctag .. ', the bundle in ' .. tag)
  end
  local parts = {}
  for i, c in ipairs(skus) do
    if c == sku then
      fail('a bundle cannot be its own component')
    end
    no_newline(c)
    if qtys[i] > MAX_BUNDLE_QTY then
      fail('units of component ' .. i .. ' must be between 1 and ' .. MAX_BUNDLE_QTY .. ', got ' .. qtys[i])
    end
    parts[i] = c .. '\n' .. qtys[i]
  end
  local plan = new_plan(tag, keys[1], source, ref)
  local b = state(plan, sku)
  plan.sku = sku
  check_bundle(plan, b, skus)
  local definition = table.concat(parts, '\n')
  if b and b.components == definition then
    return {'unchanged', listed(plan, sku)}
  end
  if b and b.committed > 0 then
    fail(string.format('%q', sku) .. ' has ' .. b.committed .. ' units committed to open orders: ship or cancel them first')
  end
  return define(plan, b or blank(tag, sku), skus, definition)
end

--[[
  stocksync_bundle_delete: a bundle stops being one: it stays as a plain SKU at 0 (so every channel lists
  0 under its name) and leaves its components' lists.
    KEYS[1] <tag>:events   KEYS[2] <tag>:sku:<bundle>
    ARGV[1] source  ARGV[2] ref (carried by the event)
  Reply: {status, available, version}   status ok | not_bundle (nothing changes) | unknown_sku
  Refused (error): the bundle has units committed to open orders (ship or cancel them first).
]]
local function bundle_delete(keys, args)
  if #keys ~= 2 then
    fail('expected 2 keys (events, bundle), got ' .. #keys)
  end
  local source, ref = text(args[1], 'source', MAX_SOURCE_LEN), text(args[2], 'ref', MAX_REF_LEN)
  local tag, sku = sku_of(keys[2])
  events_of(tag, keys[1])
  local plan = new_plan(tag, keys[1], source, ref)
  local b = state(plan, sku)
  if not b then
    return {'unknown_sku', 0, 0}
  end
  if not b.components then
    return {'not_bundle', avail(b), b.version}
  end
  if b.committed > 0 then
    fail(string.format('%q', sku) .. ' has ' .. b.committed .. ' units committed to open orders: ship or cancel them first')
  end
  for _, part in ipairs(parts_in(b.components)) do
    local c = state(plan, part[1])
    if c then
      write_bundles(c, with_bundle(c.bundles, sku, false))
    end
  end
  redis.call('HDEL', b.key, 'components', 'committed')
  b.components, b.committed, b.committed0 = nil, 0, 0
  local delta = -b.available
  b.available = 0
  emit(plan, b, delta, 'define')
  redis.call('SREM', heads_of(tag).bundles, sku)
  return {'ok', 0, b.version}
end


-- Reservations --------------------------------------------------------------------------------------------

-- The reservation key KEYS[k] names the reservation: <tag>:res:<id>.
local function reservation_key(key, tag)
  local t, id = string.match(key or '', '^(%b{}):res:(.+)$')
  if not t or (tag and t ~= tag) then
    fail('reservation key ' .. string.format('%q', key or '') .. ' is not ' .. (tag or '<tag>') .. ':res:<id>')
  end
  if #id > MAX_REF_LEN then
    fail('reservation id must be at most ' .. MAX_REF_LEN .. ' bytes')
  end
  return t, id
end

local function ms_left(r)
  local now = now_ms()
  return math.max(r.exp - now, 0)
end

-- A reply's state of a reservation: held past its expiry counts as expired.
local function state_now(r)
  if r.state == 'held' and ms_left(r) == 0 then
    return 'expired'
  end
  return r.state
end

-- Holds what the lines need (available -> reserved): each SKU's hold set gets <units>:<id> with the
-- expiry, the partition's expiries the reservation.
local function hold(plan, r, skus, qtys, need, order)
  local h, parts = heads_of(plan.tag), {}
  take(plan, skus, qtys, need, order, 'reserved', 'reserve')
  for i, sku in ipairs(order) do
    redis.call('ZADD', h.hold .. sku, r.exp, need[sku] .. ':' .. r.id)
    parts[i] = sku .. '\n' .. need[sku]
  end
  redis.call('HSET', r.key, 'state', 'held', 'exp', r.exp, 'src', plan.source, 'lines', r.lines,
    'holds', table.concat(parts, '\n'))
  redis.call('PEXPIRE', r.key, r.ttl + IDEM_TTL_S * 1000)
  redis.call('ZADD', h.expiries, r.exp, r.id)
  local due = hold_due[plan.tag]
  if not due or r.exp < due then
    due_at(plan.tag, r.exp)
  end
end

--[[
  stocksync_reserve: hold units for a while (a checkout during payment): every line or none, from
  available into reserved, until stocksync_commit makes them a sale, stocksync_release gives them back,
  or the time to live passes (then they come back by themselves, once: see the header).
    KEYS[1] <tag>:events   KEYS[2] <tag>:res:<id> (the reservation: its id is its reference)
    KEYS[3..n+2] <tag>:sku:<sku> (n lines, SKUs distinct; a bundle holds its components)
    ARGV[1] source  ARGV[2] time to live in ms (1 .. 604800000)  ARGV[3..n+2] qty of each line
  Reply: {status, lines, replayed, ms_left}, lines = {{sku, available, version}, ...} as now.
    ok: held (events op reserve, and op bundle); insufficient: nothing held, one stock.rejected per
    short line (op reserve), and the id keeps that outcome; unknown_sku: nothing changes or is kept.
    replayed 1: the id was used before: its first status, the time it has left (0 once it ended).
  The id keeps its outcome until IDEM_TTL_S after the expiry; an id used with other lines is refused.
]]
local function reserve(keys, args)
  local n = #keys - 2
  if n < 1 or n > MAX_ORDER_LINES then
    fail('a reservation needs 1 to ' .. MAX_ORDER_LINES .. ' lines, got ' .. n)
  end
  if #args ~= n + 2 then
    fail('expected ' .. n .. ' quantities for ' .. n .. ' SKU keys, got ' .. (#args - 2))
  end
  local source = text(args[1], 'source', MAX_SOURCE_LEN)
  local ttl = integer(args[2], 'time to live (ms)', 1, MAX_HOLD_MS)
  local tag, skus, qtys = lines_of(keys, args, 3, n)
  events_of(tag, keys[1])
  local _, id = reservation_key(keys[2], tag)
  local lines = {}
  for i, sku in ipairs(skus) do
    lines[i] = no_newline(sku) .. '\n' .. qtys[i]
  end
  lines = table.concat(lines, '\n')
  local plan = new_plan(tag, keys[1], source, id)
  local r = reservation_of(tag, id)
  if r then
    if r.lines ~= lines then
      fail('reservation ' .. string.format('%q', id) .. ' was first made with other lines')
    end
    return {r.state == 'insufficient' and 'insufficient' or 'ok', line_states(plan, skus), 1, ms_left(r)}
  end
  local need, order_of = needs_of(plan, skus, qtys)
  if not need then
    return {'unknown_sku', line_states(plan, skus), 0, 0}
  end
  local any, short = shortages(plan, need, order_of)
  r = {key = keys[2], id = id, lines = lines, ttl = ttl, exp = now_ms() + ttl}
  if any then
    flag_short(plan, skus, qtys, short, 'reserve')
    redis.call('HSET', r.key, 'state', 'insufficient', 'exp', 0, 'src', source, 'lines', lines)
    redis.call('PEXPIRE', r.key, IDEM_TTL_S * 1000)
  else
    hold(plan, r, skus, qtys, need, order_of)
  end
  expire_step(tag, keys[1])
  return {any and 'insufficient' or 'ok', line_states(plan, skus), 0, any and 0 or ttl}
end

-- The arguments of a call on one reservation: KEYS events, reservation; ARGV[1] source.
local function one_reservation(keys, args)
  if #keys ~= 2 then
    fail('expected 2 keys (events, reservation), got ' .. #keys)
  end
  local source = text(args[1], 'source', MAX_SOURCE_LEN)
  local tag, id = reservation_key(keys[2])
  events_of(tag, keys[1])
  return new_plan(tag, keys[1], source, id), reservation_of(tag, id)
end

local function reservation_lines(plan, r)
  local skus = {}
  for i, part in ipairs(parts_in(r.lines)) do
    skus[i] = part[1]
  end
  return line_states(plan, skus)
end

-- Whether every hold of a held reservation is still in its SKU's hold set.
local function holds_intact(plan, r)
  local h = heads_of(plan.tag)
  for _, part in ipairs(parts_in(r.holds)) do
    if not redis.call('ZSCORE', h.hold .. part[1], part[2] .. ':' .. r.id) then
      return false
    end
  end
  return true
end

-- Held units become a sale: reserved -> committed for every hold (op commit, available unchanged), and
-- a bundle line's units become the bundle's committed.
local function commit_holds(plan, r)
  local h = heads_of(plan.tag)
  for _, part in ipairs(parts_in(r.holds)) do
    redis.call('ZREM', h.hold .. part[1], part[2] .. ':' .. r.id)
    local s = state(plan, part[1])
    if s then
      settle(plan, s)
      s.reserved, s.committed = s.reserved - part[2], s.committed + part[2]
      emit(plan, s, 0, 'commit')
    end
  end
  for _, part in ipairs(parts_in(r.lines)) do
    local b = state(plan, part[1])
    if b and b.components then
      b.committed = b.committed + part[2]
      redis.call('HSET', b.key, 'committed', b.committed)
    end
  end
  refresh_bundles(plan)
  redis.call('HSET', r.key, 'state', 'committed')
  redis.call('PEXPIRE', r.key, IDEM_TTL_S * 1000)
  redis.call('ZREM', h.expiries, r.id)
end

--[[
  stocksync_commit: a held reservation becomes a sale of its lines (reserved -> committed), as
  stocksync_order would have taken them; exactly once (the reservation is its own record).
    KEYS[1] <tag>:events   KEYS[2] <tag>:res:<id>   ARGV[1] source
  Reply: {status, lines, replayed}, lines = {{sku, available, version}, ...} as now.
    ok: committed (replayed 1 when it was before); expired: its time had passed (its holds are given
    back now if they were not); released | insufficient: it holds nothing; unknown: no such reservation.
]]
local function commit(keys, args)
  local plan, r = one_reservation(keys, args)
  if not r then
    return {'unknown', {}, 0}
  end
  if r.state == 'held' and (ms_left(r) == 0 or not holds_intact(plan, r)) then
    end_reservation(new_plan(plan.tag, plan.events, 'expiry', r.id), r, 'expired', 'expire')
  elseif r.state == 'held' then
    commit_holds(plan, r)
    expire_step(plan.tag, plan.events)
    return {'ok', reservation_lines(plan, r), 0}
  end
  return {r.state == 'committed' and 'ok' or r.state, reservation_lines(plan, r), r.state == 'committed' and 1 or 0}
end

--[[
  stocksync_release: give a held reservation's units back (reserved -> available, op release).
    KEYS[1] <tag>:events   KEYS[2] <tag>:res:<id>   ARGV[1] source
  Reply: {status, lines, replayed}
    ok: released (replayed 1 when it was before); expired: its time had passed (given back as expired);
    committed: it is a sale now (cancel the order lines instead); insufficient: it never held anything;
    unknown: no such reservation.
]]
local function release(keys, args)
  local plan, r = one_reservation(keys, args)
  if not r then
    return {'unknown', {}, 0}
  end
  if r.state == 'held' and ms_left(r) == 0 then
    end_reservation(new_plan(plan.tag, plan.events, 'expiry', r.id), r, 'expired', 'expire')
  elseif r.state == 'held' then
    end_reservation(plan, r, 'released', 'release')
    expire_step(plan.tag, plan.events)
    return {'ok', reservation_lines(plan, r), 0}
  end
  return {r.state == 'released' and 'ok' or r.state, reservation_lines(plan, r), r.state == 'released' and 1 or 0}
end

--[[
  stocksync_reservation (FCALL_RO): a reservation as it stands.
    KEYS[1] <tag>:res:<id>
  Reply: {state, expires_ms, ms_left, lines, source} or an empty array (unknown, or forgotten IDEM_TTL_S
    after it ended). state: held | committed | released | expired (a held one past its expiry reads as
    expired) | insufficient; lines = {sku, qty, ...} as reserved.
]]
local function reservation(keys, args)
  if #keys ~= 1 then
    fail('expected 1 key (reservation), got ' .. #keys)
  end
  local tag, id = reservation_key(keys[1])
  local r = reservation_of(tag, id)
  if not r then
    return {}
  end
  return {state_now(r), r.exp, r.state == 'held' and ms_left(r) or 0, flat_parts(r.lines), r.src}
end

--[[
  stocksync_expire: the sweep: end up to `count` reservations of the partition whose time has passed
  (their holds go back to available, op expire, source expiry). Workers call it every second per
  partition; writing calls of the partition also end a few once the next expiry has passed.
    KEYS[1] <tag>:events   ARGV[1] count (1 .. 500)
  Reply: {'ok', ended, next_ms}   next_ms: the next expiry in the partition (0: none held).
]]
local function expire(keys, args)
  if #keys ~= 1 or not string.find(keys[1] or '', '^%b{}:events$') then
    fail('expected 1 key (events)')
  end
  local n = integer(args[1], 'count', 1, MAX_EXPIRE_COUNT)
  local tag = string.match(keys[1], '^(%b{}):events$')
  local ended, next_due = expire_due(tag, keys[1], n)
  return {'ok', ended, next_due}
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
redis.register_function('stocksync_count', guarded(count))
redis.register_function('stocksync_ship', guarded(ship))
redis.register_function('stocksync_cancel', guarded(cancel))
redis.register_function('stocksync_bundle_set', guarded(bundle_set))
redis.register_function('stocksync_bundle_delete', guarded(bundle_delete))
redis.register_function('stocksync_reserve', guarded(reserve))
redis.register_function('stocksync_commit', guarded(commit))
redis.register_function('stocksync_release', guarded(release))
redis.register_function('stocksync_expire', guarded(expire))
redis.register_function{function_name = 'stocksync_get', callback = guarded(get), flags = {'no-writes'}}
redis.register_function{function_name = 'stocksync_stock', callback = guarded(stock), flags = {'no-writes'}}
redis.register_function{function_name = 'stocksync_reservation', callback = guarded(reservation),
  flags = {'no-writes'}}
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
    available is what a read counts (0.6): holds of expired reservations count as available; a bundle's
    is the fewest whole bundles its components make now (its components' keys are derived, same tag).
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
  local out, plan = {}, new_plan(tag)
  for i = 1, n do
    local lease_key = keys[1 + n + i]
    local leased = 0
    if redis.call('SET', lease_key, owner, 'NX', 'PX', ttl) then
      leased = 1
    elseif redis.call('GET', lease_key) == owner then
      redis.call('PEXPIRE', lease_key, ttl)
      leased = 1
    end
    local available, version = listed(plan, skus[i])
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
  beyond what was taken, and ships it never beyond what is still committed, however many distinct
  restocks and shipments of that line arrive at once or from several API processes. Before applying a
  restock (stocksync_cancel or _adjust) or a shipment (stocksync_ship) under its own reference, it
  claims the units here, in one key per line. That key lives outside the partitions (a Flipkart
  cancellation names only the line; its SKU is known from the intake's line record), so these functions
  touch that one key and nothing else.

    <prefix>:wh:line:<channel>:<line key>:restocks   hash, the line's ledger: id -> record
      restock:  p<units>[c<from committed>] (claimed) or d<units>[c<...>] (applied: the intake HSETs it
                after the change); c: the units a cancellation takes back from committed (the line's
                unshipped units), the rest are returns of shipped units (0.5 records have no c part)
      shipment: h<units> (claimed) or s<units> (applied)
]]

local MAX_RESTOCK_ID_LEN = 200
local MAX_LINE_TTL_S = 315360000  -- 10 years

-- The line's ledger so far: units restocked (all kinds), of them taken back from committed, shipped;
-- and the record of `id` if it has one.
local function ledger(key, id, before)
  local flat = redis.call('HGETALL', key)
  local l = {restocked = before, released = 0, shipped = 0}
  for i = 1, #flat, 2 do
    local st, units, c = string.match(flat[i + 1], '^([pdhs])(%d+)c?(%d*)$')
    if not st then
      fail('restock record ' .. string.format('%q', flat[i + 1]) .. ' of ' .. string.format('%q', flat[i])
        .. ' is not p<units>, d<units>, h<units> or s<units>')
    end
    units, c = tonumber(units), tonumber(c) or 0
    if flat[i] == id then
      l.own = {state = st, units = units, c = c}
    elseif st == 'h' or st == 's' then
      l.shipped = l.shipped + units
    else
      l.restocked, l.released = l.restocked + units, l.released + c
    end
  end
  return l
end

local function line_args(keys, args, least, most, names)
  if #keys ~= 1 or not string.find(keys[1] or '', ':restocks$') then
    fail('expected 1 key (<prefix>:wh:line:<channel>:<line key>:restocks)')
  end
  if #args < least or #args > most then
    fail('expected ' .. names .. ', got ' .. #args)
  end
  return text(args[1], 'restock id', MAX_RESTOCK_ID_LEN), integer(args[2], 'units', 1, MAX_QTY),
    integer(args[3], 'taken', 0, MAX_QTY), integer(args[4], 'ttl', 1, MAX_LINE_TTL_S)
end

local function claim(key, id, record, ttl)
  redis.call('HSET', key, id, record)
  redis.call('EXPIRE', key, ttl)
end

-- How a restock of `wanted` units splits: a cancellation (kind cancel) takes back only unshipped units
-- (from committed); a return (kind return) gives back shipped units first, then unshipped ones (a return
-- of a line whose shipment was never recorded); a line taken before 0.6 (kind none) as 0.5 did. Never
-- more than taken - restocked.
local function split(l, wanted, taken, kind)
  local left = math.max(taken - l.restocked, 0)
  local unshipped = math.max(taken - l.shipped - l.released, 0)
  if kind == 'cancel' then
    local c = math.min(wanted, unshipped, left)
    return c, c
  elseif kind == 'return' then
    local returned = math.min(wanted, math.max(l.shipped - (l.restocked - l.released), 0), left)
    local c = math.min(wanted - returned, unshipped, left - returned)
    return returned + c, c
  end
  return math.min(wanted, left), 0
end

--[[
  stocksync_restock_claim: reserve the units of one restock of an order line, capped at what was taken.
    KEYS[1] <prefix>:wh:line:<channel>:<line key>:restocks
    ARGV[1] restock id (distinct per restock of the line: cancel, r<refund line id>, x<event digest>)
    ARGV[2] units wanted (1 .. 2^31-1)
    ARGV[3] units taken (0 .. 2^31-1)
    ARGV[4] TTL of the key in seconds (1 .. 10 years), renewed by every new reservation
    ARGV[5] units restocked before this key existed (optional, default 0; the intake's old :restocked
            counter, read-only since)
    ARGV[6] kind (optional): cancel | return for a line taken into committed (library 0.6+; see split),
            none (the default) for a line taken before
  Reply: {status, units, replayed}, and from_committed when ARGV[6] is given (so a 0.5 caller's reply
    is as it was)
    reserved: units (>= 1) are reserved for this restock: apply them (from_committed of them with
              stocksync_cancel, the rest with stocksync_adjust, under the restock's reference), then mark
              the restock applied (HSET <key> <id> d<units>[c<from_committed>])
    done:     this restock was applied before (units as applied): apply nothing
    none:     nothing left to restock (units 0), nothing recorded
    replayed 1 when the restock id was recorded before: its first reservation is returned. A replayed
    reservation may not have been applied yet (the caller stopped in between): apply it again under the
    same reference, which the library makes a no-op if it was.
]]
local function restock_claim(keys, args)
  local id, wanted, taken, ttl = line_args(keys, args, 4, 6, '4 or 5 arguments (id, units, taken, ttl, '
    .. '[restocked before]), or 6 with the kind')
  local before = args[5] and integer(args[5], 'restocked before', 0, MAX_QTY) or 0
  local kind = args[6] or 'none'
  if kind ~= 'cancel' and kind ~= 'return' and kind ~= 'none' then
    fail("kind must be cancel, return or none, got " .. string.format('%q', kind))
  end
  local l = ledger(keys[1], id, before)
  local reply
  if l.own then
    if l.own.state == 'h' or l.own.state == 's' then
      fail('id ' .. string.format('%q', id) .. ' is a shipment of the line, not a restock')
    end
    reply = {l.own.state == 'p' and 'reserved' or 'done', l.own.units, 1, l.own.c}
  else
    local units, c = split(l, wanted, taken, kind)
    reply = units > 0 and {'reserved', units, 0, c} or {'none', 0, 0, 0}
    if units > 0 then
      claim(keys[1], id, 'p' .. units .. (c > 0 and ('c' .. c) or ''), ttl)
    end
  end
  if not args[6] then
    reply[4] = nil
  end
  return reply
end

--[[
  stocksync_ship_claim: reserve the units of one shipment of an order line taken into committed, capped
  at the line's unshipped units (taken - shipped - taken back by cancellations).
    KEYS[1] <prefix>:wh:line:<channel>:<line key>:restocks
    ARGV[1] shipment id (distinct per shipment of the line, e.g. ship:<fulfillment id>)
    ARGV[2] units wanted (1 .. 2^31-1)   ARGV[3] units taken (0 .. 2^31-1)   ARGV[4] TTL of the key (s)
  Reply: {status, units, replayed}   as stocksync_restock_claim: reserved (ship them with stocksync_ship
    under the shipment's reference, then HSET <key> <id> s<units>) | done | none.
]]
local function ship_claim(keys, args)
  local id, wanted, taken, ttl = line_args(keys, args, 4, 4, '4 arguments (id, units, taken, ttl)')
  local l = ledger(keys[1], id, 0)
  if l.own then
    if l.own.state ~= 'h' and l.own.state ~= 's' then
      fail('id ' .. string.format('%q', id) .. ' is a restock of the line, not a shipment')
    end
    return {l.own.state == 'h' and 'reserved' or 'done', l.own.units, 1}
  end
  local units = math.min(wanted, taken - l.shipped - l.released)
  if units <= 0 then
    return {'none', 0, 0}
  end
  claim(keys[1], id, 'h' .. units, ttl)
  return {'reserved', units, 0}
end

redis.register_function('stocksync_restock_claim', guarded(restock_claim))
redis.register_function('stocksync_ship_claim', guarded(ship_claim))
