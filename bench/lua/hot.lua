-- wrk script: GETs /hot/0 .. /hot/N-1 in turn (N = $HOT_URLS, default 8) and prints
-- report.lua's WRKJSON line at the end. The requests are formatted once, in init.
local reqs, i = {}, 0

init = function(args)
  local n = tonumber(os.getenv("HOT_URLS") or "8")
  for k = 0, n - 1 do
    reqs[k + 1] = wrk.format("GET", "/hot/" .. k)
  end
end

request = function()
  i = i % #reqs + 1
  return reqs[i]
end

dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "report.lua")
