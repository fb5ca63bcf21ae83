<?php
// Request and Response objects built from PHP's globals, as Symfony's
// HttpFoundation does for Laravel.
namespace Mini;

class Request
{
    public array $attributes = [];

    public function __construct(
        public string $method,
        public string $path,
        public array $query,
        public array $headers,
        public array $server,
    ) {
    }

    public static function capture(): self
    {
        $headers = [];
        foreach ($_SERVER as $k => $v) {
            if (str_starts_with($k, 'HTTP_')) {
                $headers[strtolower(str_replace('_', '-', substr($k, 5)))] = $v;
            }
        }
        $uri = $_SERVER['REQUEST_URI'] ?? '/';
        $path = rawurldecode(parse_url($uri, PHP_URL_PATH) ?: '/');
        return new self($_SERVER['REQUEST_METHOD'] ?? 'GET', $path, $_GET, $headers, $_SERVER);
    }

    public function header(string $name, ?string $default = null): ?string
    {
        return $this->headers[strtolower($name)] ?? $default;
    }

    public function input(string $key, $default = null)
    {
        return $this->query[$key] ?? $default;
    }

    public function wantsJson(): bool
    {
        return str_contains($this->header('accept', ''), 'json') || str_starts_with($this->path, '/api/');
    }
}

class Response
{
    public function __construct(public string $body = '', public int $status = 200, public array $headers = [])
    {
    }

    public static function json($data, int $status = 200): self
    {
        return new self(json_encode($data, JSON_UNESCAPED_SLASHES), $status, ['Content-Type' => 'application/json']);
    }

    public function send(): void
    {
        http_response_code($this->status);
        $this->headers += ['Content-Type' => 'text/html; charset=UTF-8'];
        foreach ($this->headers as $k => $v) {
            header("$k: $v");
        }
        echo $this->body;
    }
}
