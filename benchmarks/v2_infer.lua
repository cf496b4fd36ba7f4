-- wrk script: POST one prepared inference request (Open Inference Protocol, binary tensor data) in a loop.
--   wrk -t2 -c16 -d20s -s benchmarks/v2_infer.lua http://127.0.0.1:8000/v2/models/classify/infer -- BODY_FILE HEADER_BYTES
-- BODY_FILE holds the JSON header followed by the tensors' bytes; HEADER_BYTES is the JSON's length.
-- Answers other than 200 are counted by wrk as "Non-2xx or 3xx responses".
function init(args)
  local f = assert(io.open(args[1], "rb"))
  wrk.body = f:read("*a")
  f:close()
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/octet-stream"
  wrk.headers["Inference-Header-Content-Length"] = args[2]
end
