-- POST /tools: a new tool per request, named uniquely (run nonce, thread, counter).
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end

local counter = 0
function init(args)
  dofile(args[1])
  nonce = args[2]
end

request = function()
  counter = counter + 1
  local body = string.format('{"name": "bench-%s-%d-%d", "baseUrl": "https://bench.example.com", "authType": "none"}',
                             nonce, tid, counter)
  return wrk.format("POST", "/tools", {["X-Org-ID"] = org, ["Content-Type"] = "application/json"}, body)
end
