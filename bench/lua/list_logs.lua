-- GET /execution-logs?limit=50 of one organization, the first page or the page at a cursor.
function init(args)
  dofile(args[1])
  path = "/execution-logs?limit=50"
  if cursor ~= nil and cursor ~= "" then
    path = path .. "&cursor=" .. cursor
  end
end

request = function()
  return wrk.format("GET", path, {["X-Org-ID"] = org})
end
