-- GET /tools/{id}: a random tool of the benchmark's organization.
-- Data (org, tools) comes from the file named by the first script argument.
function init(args)
  dofile(args[1])
  math.randomseed(os.time() + math.floor(os.clock() * 1e6))
end

request = function()
  return wrk.format("GET", "/tools/" .. tools[math.random(#tools)], {["X-Org-ID"] = org})
end
