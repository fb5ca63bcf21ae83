# A Rack app for Puma (Debian's `puma` and `ruby-rack`), started by polyhost
# with socket activation: `puma --bind-to-activated-sockets only` takes the
# socket handed over as fd 3 (LISTEN_FDS/LISTEN_PID). Answers
# `rack pid=.. uid=.. path=.. env=$FIXTURE_ENV`; /healthz answers "ok";
# /slow answers the same after half a second.
run lambda { |env|
  if env["PATH_INFO"] == "/healthz"
    next [200, { "Content-Type" => "text/plain" }, ["ok"]]
  end
  sleep 0.5 if env["PATH_INFO"] == "/slow"
  body = "rack pid=#{Process.pid} uid=#{Process.uid} path=#{env['PATH_INFO']} env=#{ENV.fetch('FIXTURE_ENV', '<unset>')}"
  [200, { "Content-Type" => "text/plain", "Content-Length" => body.bytesize.to_s }, [body]]
}
