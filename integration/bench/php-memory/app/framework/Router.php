<?php
// A router as Laravel's: routes with {parameters} compiled to regular
// expressions, groups with a prefix and middleware, named routes.
namespace Mini;

class Route
{
    public string $regex;
    public array $names = [];

    public function __construct(public string $method, public string $uri, public array $action, public array $middleware)
    {
        $this->regex = '#^' . preg_replace_callback('#\{(\w+)\}#', function ($m) {
            $this->names[] = $m[1];
            return '([^/]+)';
        }, $uri) . '$#';
    }
}

class Router
{
    private array $routes = [];
    private array $named = [];
    private array $group = ['prefix' => '', 'middleware' => []];

    public function get(string $uri, array $action, ?string $name = null): Route
    {
        $r = new Route('GET', rtrim($this->group['prefix'] . $uri, '/') ?: '/', $action, $this->group['middleware']);
        $this->routes[] = $r;
        if ($name !== null) {
            $this->named[$name] = $r;
        }
        return $r;
    }

    public function group(array $attrs, \Closure $routes): void
    {
        $saved = $this->group;
        $this->group = [
            'prefix' => $saved['prefix'] . ($attrs['prefix'] ?? ''),
            'middleware' => array_merge($saved['middleware'], $attrs['middleware'] ?? []),
        ];
        $routes($this);
        $this->group = $saved;
    }

    public function url(string $name, array $params = []): string
    {
        $uri = $this->named[$name]->uri;
        foreach ($params as $k => $v) {
            $uri = str_replace('{' . $k . '}', rawurlencode((string) $v), $uri);
        }
        return $uri;
    }

    /** @return array{Route, array}|null */
    public function match(Request $req): ?array
    {
        foreach ($this->routes as $r) {
            if ($r->method === $req->method && preg_match($r->regex, $req->path, $m)) {
                return [$r, array_combine($r->names, array_slice($m, 1)) ?: []];
            }
        }
        return null;
    }
}

class Pipeline
{
    public function __construct(private Container $c)
    {
    }

    /** Runs $req through each middleware class (outermost first), then $core. */
    public function run(Request $req, array $middleware, \Closure $core): Response
    {
        $next = $core;
        foreach (array_reverse($middleware) as $class) {
            $next = function (Request $r) use ($class, $next) {
                return $this->c->make($class)->handle($r, $next);
            };
        }
        return $next($req);
    }
}
