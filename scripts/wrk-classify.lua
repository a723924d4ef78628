-- wrk script: POST the image in $IMG to /classify as multipart field `file`
-- (or, with FIELD=files and IMGS="a.jpg,b.jpg,..." (commas or spaces), several images to
-- /classify/batch). Prints a human line and a machine line:
--   RESULT <requests/s> <p50 ms> <p99 ms> <errors: socket errors + non-2xx>
--   IMG=cat.jpg wrk -t2 -c32 -d20s --latency -s scripts/wrk-classify.lua http://127.0.0.1:8000/classify
local boundary = "----wrk-cifar-boundary"
local field = os.getenv("FIELD") or "file"
local paths = {}
for p in string.gmatch(os.getenv("IMGS") or os.getenv("IMG") or "", "[^,%s]+") do
  table.insert(paths, p)
end
assert(#paths > 0, "set IMG (or IMGS) to image file paths")

local parts = {}
for i, path in ipairs(paths) do
  local f = assert(io.open(path, "rb"))
  local data = f:read("*all")
  f:close()
  table.insert(parts, "--" .. boundary .. "\r\n" ..
    'Content-Disposition: form-data; name="' .. field .. '"; filename="img' .. i .. '.jpg"\r\n' ..
    "Content-Type: image/jpeg\r\n\r\n" .. data .. "\r\n")
end
wrk.method = "POST"
wrk.body = table.concat(parts) .. "--" .. boundary .. "--\r\n"
wrk.headers["Content-Type"] = "multipart/form-data; boundary=" .. boundary

function done(summary, latency, requests)
  local e = summary.errors
  local errors = e.connect + e.read + e.write + e.timeout + e.status
  local p50, p99 = latency:percentile(50) / 1000, latency:percentile(99) / 1000
  io.write(string.format("p50 %.2f ms, p99 %.2f ms, non-2xx %d\n", p50, p99, e.status))
  io.write(string.format("RESULT %.1f %.3f %.3f %d\n",
    summary.requests / (summary.duration / 1e6), p50, p99, errors))
end
