-- POST a 16 KiB body to /post; the app answers with its length ("16384").
wrk.method = "POST"
wrk.path = "/post"
wrk.body = string.rep("a", 16384)
wrk.headers["Content-Type"] = "application/octet-stream"
