-- wrk script for bench/store.sh: opaque-token issuance or introspection,
-- spread over one or more token-server replicas.
--   STORE_ADDRS   "127.0.0.1:port[,127.0.0.1:port]": thread i connects to
--                 address i mod n (wrk -t2 and two replicas: one thread each)
--   STORE_AUTH    Authorization header value ("Basic <b64>")
--   STORE_MODE    issue | introspect
--   STORE_BODY    form body (issue)
--   STORE_TOKENS  file of opaque tokens, one a line (introspect): each thread
--                 cycles through all of them from its own starting point
-- A response counts as ok only with status 200 and, for introspection,
-- "active":true in the body. done() prints one BENCH_RESULT line.
local mode = os.getenv("STORE_MODE") or "issue"
local threads, addrs, n = {}, {}, 0
for a in string.gmatch(os.getenv("STORE_ADDRS") or "", "[^,]+") do table.insert(addrs, a) end

function setup(thread)
  n = n + 1
  if #addrs > 0 then
    local a = addrs[(n - 1) % #addrs + 1]
    local host, port = a:match("^(.*):(%d+)$")
    thread.addr = wrk.lookup(host, port)[1]
  end
  thread:set("index", n)
  table.insert(threads, thread)
end

local tokens, i = {}, 1
local headers = {
  ["Content-Type"] = "application/x-www-form-urlencoded",
  ["Accept"] = "application/json",
  ["Authorization"] = os.getenv("STORE_AUTH"),
}

if mode ~= "introspect" then
  wrk.method = "POST"
  wrk.body = os.getenv("STORE_BODY")
  for k, v in pairs(headers) do wrk.headers[k] = v end
end

function init(args)
  ok, bad, first_bad = 0, 0, ""
  if mode == "introspect" then
    for line in io.lines(os.getenv("STORE_TOKENS")) do
      if line ~= "" then table.insert(tokens, "token=" .. line) end
    end
    i = ((index or 1) - 1) * 7919 % #tokens + 1
  end
end

if mode == "introspect" then -- issuance keeps wrk's static request
  function request()
    local body = tokens[i]
    i = i % #tokens + 1
    return wrk.format("POST", wrk.path, headers, body)
  end
end

function response(status, hdrs, body)
  if status == 200 and (mode ~= "introspect" or string.find(body or "", '"active":true', 1, true)) then
    ok = ok + 1
  else
    bad = bad + 1
    if first_bad == "" then
      first_bad = tostring(status) .. " " .. string.sub(body or "", 1, 120):gsub("%s+", " ")
    end
  end
end

function done(summary, latency, requests)
  local okn, badn, sample = 0, 0, ""
  for _, t in ipairs(threads) do
    okn = okn + t:get("ok")
    badn = badn + t:get("bad")
    if sample == "" then sample = t:get("first_bad") end
  end
  local e = summary.errors
  io.write(string.format(
    "BENCH_RESULT rps=%.1f p50_us=%d p99_us=%d ok=%d non200=%d sockerr=%d\n",
    summary.requests / (summary.duration / 1e6),
    latency:percentile(50), latency:percentile(99), okn, badn,
    e.connect + e.read + e.write + e.timeout))
  if sample ~= "" then io.write("BENCH_FIRST_BAD " .. sample .. "\n") end
end
