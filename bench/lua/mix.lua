-- 80 % GET /tools/{id}, 20 % POST /tools.
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end

local counter = 0
function init(args)
  dofile(args[1])
  nonce = args[2]
  math.randomseed(os.time() + tid)
end

request = function()
  if math.random() < 0.8 then
    return wrk.format("GET", "/tools/" .. tools[math.random(#tools)], {["X-Org-ID"] = org})
  end
  counter = counter + 1
  local body = string.format('{"name": "mix-%s-%d-%d", "baseUrl": "https://bench.example.com", "authType": "none"}',
                             nonce, tid, counter)
  return wrk.format("POST", "/tools", {["X-Org-ID"] = org, ["Content-Type"] = "application/json"}, body)
end
