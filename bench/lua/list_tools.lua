-- GET /tools?limit=50: the first page of the organization's tools.
function init(args)
  dofile(args[1])
end

request = function()
  return wrk.format("GET", "/tools?limit=50", {["X-Org-ID"] = org})
end
