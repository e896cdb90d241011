-- PUT /flows/{id}: new steps each time, so every request stores a new flow version.
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
  counter = counter + 1
  local body = string.format(
    '{"steps": [{"id": "a", "type": "transform", "config": {"output": "v-%s-%d-%d"}},' ..
    ' {"id": "b", "type": "transform", "config": {"output": "{{ steps.a }}"}}]}', nonce, tid, counter)
  return wrk.format("PUT", "/flows/" .. flows[math.random(#flows)],
                    {["X-Org-ID"] = org, ["Content-Type"] = "application/json"}, body)
end
