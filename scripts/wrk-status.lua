-- wrk script for overload runs: POSTs $IMG to /classify as multipart field `file`, counts
-- answers by status across all threads, and counts 503/429 answers without Retry-After.
-- Prints: STATUS <code> <count> lines, MISSING_RETRY_AFTER <n>, SOCKET_ERRORS <n>.
local boundary = "----wrk-cifar-boundary"
local f = assert(io.open(assert(os.getenv("IMG"), "set IMG"), "rb"))
local data = f:read("*all")
f:close()
wrk.method = "POST"
wrk.headers["Content-Type"] = "multipart/form-data; boundary=" .. boundary
wrk.body = "--" .. boundary .. "\r\n" ..
  'Content-Disposition: form-data; name="file"; filename="img.jpg"\r\n' ..
  "Content-Type: image/jpeg\r\n\r\n" .. data .. "\r\n--" .. boundary .. "--\r\n"

local threads = {}
function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  counts = {}
  missing_retry = 0
end

function response(status, headers, body)
  counts[status] = (counts[status] or 0) + 1
  if (status == 503 or status == 429) and headers["retry-after"] == nil
      and headers["Retry-After"] == nil then
    missing_retry = missing_retry + 1
  end
end

function done(summary, latency, requests)
  local total, missing = {}, 0
  for _, t in ipairs(threads) do
    for code, n in pairs(t:get("counts")) do
      total[code] = (total[code] or 0) + n
    end
    missing = missing + t:get("missing_retry")
  end
  for code, n in pairs(total) do
    io.write(string.format("STATUS %d %d\n", code, n))
  end
  local e = summary.errors
  io.write(string.format("MISSING_RETRY_AFTER %d\n", missing))
  io.write(string.format("SOCKET_ERRORS %d (connect %d, read %d, write %d, timeout %d)\n",
    e.connect + e.read + e.write + e.timeout, e.connect, e.read, e.write, e.timeout))
  io.write(string.format("LATENCY p50 %.2f ms, p99 %.2f ms\n",
    latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
