<?php
// What a Laravel request does between index.php and the response: autoload,
// build the container, load config, register and boot service providers,
// load routes, run the global and route middleware, resolve the controller
// by reflection, render a view.
namespace Mini;

class Config
{
    private array $items = [];

    public function __construct(string $dir)
    {
        foreach (glob($dir . '/*.php') as $f) {
            $this->items[basename($f, '.php')] = require $f;
        }
    }

    public function get(string $key, $default = null)
    {
        $v = $this->items;
        foreach (explode('.', $key) as $part) {
            if (!is_array($v) || !array_key_exists($part, $v)) {
                return $default;
            }
            $v = $v[$part];
        }
        return $v;
    }
}

class Events
{
    private array $listeners = [];

    public function __construct(private Container $c)
    {
    }

    public function listen(string $event, string $listener): void
    {
        $this->listeners[$event][] = $listener;
    }

    public function dispatch(object $event): void
    {
        foreach ($this->listeners[get_class($event)] ?? [] as $l) {
            $this->c->make($l)->handle($event);
        }
    }
}

abstract class ServiceProvider
{
    public function __construct(protected Container $app)
    {
    }

    abstract public function register(): void;

    public function boot(): void
    {
    }
}

class Kernel
{
    public function __construct(private Container $app, private string $base)
    {
    }

    public function bootstrap(): void
    {
        $app = $this->app;
        $app->instance(Container::class, $app);
        $config = new Config($this->base . '/config');
        $app->instance(Config::class, $config);
        $app->singleton(Router::class);
        $app->singleton(Events::class);
        $app->singleton(View::class, fn () => new View(
            $this->base . '/views',
            $this->base . '/storage/views',
            ['appName' => $config->get('app.name')]
        ));
        $providers = [];
        foreach ($config->get('app.providers') as $class) {
            $p = new $class($app);
            $p->register();
            $providers[] = $p;
        }
        foreach ($providers as $p) {
            $p->boot();
        }
        $router = $app->make(Router::class);
        (require $this->base . '/routes/web.php')($router);
    }

    public function handle(Request $req): Response
    {
        $this->app->instance(Request::class, $req);
        $router = $this->app->make(Router::class);
        $global = $this->app->make(Config::class)->get('app.middleware');
        return (new Pipeline($this->app))->run($req, $global, function (Request $req) use ($router) {
            $match = $router->match($req);
            if ($match === null) {
                return new Response($this->app->make(View::class)->render('errors.404', ['path' => $req->path]), 404);
            }
            [$route, $params] = $match;
            return (new Pipeline($this->app))->run($req, $route->middleware, function (Request $req) use ($route, $params) {
                [$class, $method] = $route->action;
                $out = $this->app->call([$this->app->make($class), $method], $params);
                return $out instanceof Response ? $out : new Response((string) $out);
            });
        });
    }
}
