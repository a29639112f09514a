-- wrk script of benches/load/run.sh: POST the JSON body in the file named
-- after wrk's `--` to every request, and print one machine-readable summary
-- line ("JSON {...}") that bench.py parses instead of wrk's prose.
--
--   wrk -t1 -c64 -d10s --latency -s post.lua URL -- body.json

local function read_file(path)
  local f = assert(io.open(path, "rb"), "cannot open body file " .. tostring(path))
  local text = f:read("*a")
  f:close()
  return text
end

function init(args)
  wrk.method = "POST"
  wrk.body = read_file(args[1])
  wrk.headers["Content-Type"] = "application/json"
end

function done(summary, latency, requests)
  local e = summary.errors
  local function us(p)
    return math.floor(latency:percentile(p))
  end
  io.write(string.format(
    'JSON {"requests":%d,"duration_us":%d,"bytes":%d,"connect":%d,"read":%d,"write":%d,' ..
    '"status":%d,"timeout":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"p999_us":%d,' ..
    '"max_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, us(50), us(90), us(99), us(99.9), latency.max, latency.mean))
end
