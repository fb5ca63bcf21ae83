<!doctype html>
<html><head><title>{{ $title }} · {{ $appName }}</title></head>
<body>
<header><nav><a href="/">Home</a> <a href="/search?q=lorem">Search</a> <a href="/api/posts">API</a></nav></header>
<main>@yield('content')</main>
<footer>{{ date('Y') }} {{ $appName }}: {{ count($extra) }} values computed</footer>
</body></html>
