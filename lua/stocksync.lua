#!lua name=stocksync
--[[
  stocksync: the only code that changes stock.

  Every function touches the keys of one partition (one hash tag, one cluster slot). Keys are always
  passed in, never built here; the functions only check that they belong together. Replies are arrays
  whose first element is a status string (stocksync_get and stocksync_version excepted). Bad arguments get
  an error reply starting "ERR stocksync:" and change nothing: every check runs before the first write.

  Key layout (tag = {<prefix>:<partition>}):
    <tag>:sku:<sku>    hash: available, version, updated_ms, source (reserved, absent means 0)
    <tag>:events       stream: one entry per applied change (stock.changed) or rejection (stock.rejected)
    <tag>:idem:<ref>   string: the first outcome of <ref>, expires after IDEM_TTL_S

  Exactly once costs one write: the outcome is decided first, then stored with SET NX GET; if the
  reference was already there, SET changes nothing and hands back the first outcome, which is replayed.
]]

local VERSION = '0.1.0'
-- How long a reference is remembered (seconds). A property of the deployment, not of a call: the
-- Python loader rewrites this line from STOCKSYNC_IDEM_TTL when it loads the library.
local IDEM_TTL_S = 172800

local MAX_QTY = 2147483647
local MAX_SKU_LEN = 255
local MAX_REF_LEN = 256
local MAX_SOURCE_LEN = 64
local MAX_ORDER_LINES = 250

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

local function same_partition(tag, events_key, idem_key)
  if events_key ~= tag .. ':events' then
    fail('events key ' .. string.format('%q', events_key or '') .. ' is not ' .. tag .. ':events')
  end
  -- The caller names the reference key from the ref; checking its partition is what keeps a call in
  -- one slot (an exact match would also forbid hashing long references into shorter keys).
  local head = tag .. ':idem:'
  if type(idem_key) ~= 'string' or #idem_key <= #head or string.sub(idem_key, 1, #head) ~= head then
    fail('reference key ' .. string.format('%q', idem_key or '') .. ' is not ' .. head .. '<ref>')
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
  return sku, source, ref
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

-- Stores the outcome under the reference unless one is there already; returns the stored one if so.
-- SET NX then GET on the rare replay is cheaper than SET NX GET on every call.
local function remember(idem_key, record)
  if redis.call('SET', idem_key, record, 'NX', 'EX', IDEM_TTL_S) then
    return nil
  end
  return redis.call('GET', idem_key)
end

local function replay_single(record)
  local code, available, version = string.match(record, '^(%a)|(%-?%d+)|(%d+)$')
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
local function change_by(keys, sku, delta, source, ref)
  local sku_key, events_key, idem_key = keys[1], keys[2], keys[3]
  local available, version = read(sku_key)
  if not version then
    local first = redis.call('GET', idem_key)
    if first then
      return replay_single(first)
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
  local first = remember(idem_key, STATUS_CODE[status] .. '|' .. available .. '|' .. version)
  if first then
    return replay_single(first)
  end
  if status == 'ok' then
    apply(sku_key, events_key, sku, available, version, delta, source, ref)
  else
    flag(events_key, sku, available, version, delta, source, ref, 'insufficient')
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
]]
local function decrement(keys, args)
  local sku, source, ref = mutation(keys, args)
  local qty = integer(args[1], 'qty', 1, MAX_QTY)
  return change_by(keys, sku, -qty, source, ref)
end

--[[
  stocksync_adjust: add (restock, return) or remove (damage, count) units.
    KEYS as stocksync_decrement.
    ARGV[1] delta (non-zero, |delta| <= 2^31-1)  ARGV[2] source  ARGV[3] ref
  Reply: {status, available, version, replayed}, status ok | insufficient | unknown_sku.
  A delta that would take available below 0 is insufficient; above 2^31-1 is an error.
]]
local function adjust(keys, args)
  local sku, source, ref = mutation(keys, args)
  local delta = integer(args[1], 'delta', -MAX_QTY, MAX_QTY)
  if delta == 0 then
    fail('delta must not be 0')
  end
  return change_by(keys, sku, delta, source, ref)
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
  local sku, source, ref = mutation(keys, args)
  local target = integer(args[1], 'available', 0, MAX_QTY)
  local expected = nil
  if args[4] ~= nil then
    expected = integer(args[4], 'expected_version', 0, 99999999999)
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
  local first = remember(idem_key, record)
  if first then
    return replay_single(first)
  end
  if status == 'conflict' then
    return {status, available, version, 0}
  end
  apply(sku_key, events_key, sku, target, version + 1, target - available, source, ref)
  return {'ok', target, version + 1, 0}
end

local function replay_order(record, skus)
  local code, rest = string.match(record, '^(%a)|(.*)$')
  local out, i = {}, 1
  for a, v in string.gmatch(rest, '(%-?%d+),(%d+)') do
    out[i] = {skus[i] or '', tonumber(a), tonumber(v)}
    i = i + 1
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
    local first = redis.call('GET', idem_key)
    if not first then
      return {'unknown_sku', lines(), 0}
    end
    return replay_order(first, skus)
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
  local first = remember(idem_key, STATUS_CODE[status] .. '|' .. table.concat(parts, ';'))
  if first then
    return replay_order(first, skus)
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
  stocksync_version: the library version string (the loader replaces older libraries).
  stocksync_idem_ttl: seconds a reference is remembered, as loaded.
    no keys, no arguments.
]]
redis.register_function('stocksync_decrement', guarded(decrement))
redis.register_function('stocksync_adjust', guarded(adjust))
redis.register_function('stocksync_set', guarded(set))
redis.register_function('stocksync_order', guarded(order))
redis.register_function{function_name = 'stocksync_get', callback = guarded(get), flags = {'no-writes'}}
redis.register_function{function_name = 'stocksync_version', callback = function() return VERSION end,
  flags = {'no-writes'}}
redis.register_function{function_name = 'stocksync_idem_ttl', callback = function() return IDEM_TTL_S end,
  flags = {'no-writes'}}
