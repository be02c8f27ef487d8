-- POST a 1 MiB body to /upload; the app answers with its length ("1048576").
wrk.method = "POST"
wrk.path = "/upload"
wrk.body = string.rep("u", 1048576)
wrk.headers["Content-Type"] = "application/octet-stream"
