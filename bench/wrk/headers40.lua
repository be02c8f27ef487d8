-- GET /hello carrying 40 extra request headers (about 1.8 KiB of header data).
wrk.method = "GET"
wrk.path = "/hello"
for i = 1, 40 do
  wrk.headers["X-Bench-Header-" .. i] = "value-" .. i .. "-abcdefghijklmnopqrstuvwxyz"
end
