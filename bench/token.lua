-- wrk script for bench/run.sh. The request is static (built once from env):
--   BENCH_METHOD  GET | POST        (default POST)
--   BENCH_BODY    form body          (POST only)
--   BENCH_AUTH    Authorization header value, e.g. "Basic <b64>" (optional)
-- The URL path comes from the wrk command line. Every response whose status is
-- not 200 is counted; done() prints one machine-readable BENCH_RESULT line.
local method = os.getenv("BENCH_METHOD") or "POST"
wrk.method = method
wrk.headers["Accept"] = "application/json"
if method == "POST" then
  wrk.body = os.getenv("BENCH_BODY") or "grant_type=client_credentials&scope=orders:read"
  wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
end
local auth = os.getenv("BENCH_AUTH")
if auth and auth ~= "" then wrk.headers["Authorization"] = auth end

local threads = {}
function setup(thread) table.insert(threads, thread) end

function init(args)
  ok, bad, first_bad = 0, 0, ""
end

function response(status, headers, body)
  if status == 200 then
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
    "BENCH_RESULT rps=%.1f p50_us=%d p90_us=%d p99_us=%d ok=%d non200=%d sockerr=%d\n",
    summary.requests / (summary.duration / 1e6),
    latency:percentile(50), latency:percentile(90), latency:percentile(99), okn, badn,
    e.connect + e.read + e.write + e.timeout))
  if sample ~= "" then io.write("BENCH_FIRST_BAD " .. sample .. "\n") end
end
