<?php
// Generates the application half of the Laravel-shaped app into DEST (the
// framework, public/index.php and the views are copied beside it by run.sh):
// 120 service contracts and their implementations (a dependency graph the
// container resolves by reflection), 20 service providers, 40 models,
// 8 middleware, 16 events with 32 listeners, 5 controllers, config, routes.
// A request loads about 250 of these files, as a Laravel request loads
// several hundred.
//   php gen.php DEST
$dest = $argv[1] ?? exit("usage: php gen.php DEST\n");
const SERVICES = 120, PROVIDERS = 20, MODELS = 40, MIDDLEWARE = 8, EVENTS = 16;

function put(string $path, string $php): void
{
    global $dest;
    @mkdir(dirname("$dest/$path"), 0755, true);
    file_put_contents("$dest/$path", "<?php\n" . $php);
}

function deps(int $i): array
{
    return array_values(array_unique(array_filter([intdiv($i, 2), intdiv($i, 3), intdiv($i, 5)], fn ($d) => $d >= 1)));
}

for ($i = 1; $i <= SERVICES; $i++) {
    put("src/Contracts/ServiceContract$i.php", "namespace App\\Contracts;\n\ninterface ServiceContract$i\n{\n    public function compute(array \$input): array;\n}\n");
    $params = [];
    $body = [];
    foreach (deps($i) as $d) {
        $params[] = "private \\App\\Contracts\\ServiceContract$d \$s$d";
        $body[] = "        \$input = \$this->s{$d}->compute(array_slice(\$input, 0, 4));";
    }
    $ctor = $params ? "    public function __construct(\n        " . implode(",\n        ", $params) . ",\n    ) {\n    }\n\n" : '';
    put("src/Services/Service$i.php", "namespace App\\Services;\n\nclass Service$i implements \\App\\Contracts\\ServiceContract$i\n{\n    private array \$memo = [];\n\n$ctor" .
        "    public function compute(array \$input): array\n    {\n" . implode("\n", $body) . ($body ? "\n" : '') .
        "        \$key = md5(serialize(\$input));\n        return \$this->memo[\$key] ??= array_map(fn (\$v) => is_string(\$v) ? strrev(\$v) . '$i' : \$v, \$input + ['service' => 'Service$i']);\n    }\n}\n");
}

$per = intdiv(SERVICES, PROVIDERS);
$providers = [];
for ($p = 1; $p <= PROVIDERS; $p++) {
    $binds = [];
    for ($i = ($p - 1) * $per + 1; $i <= $p * $per; $i++) {
        $binds[] = "        \$this->app->singleton(\\App\\Contracts\\ServiceContract$i::class, \\App\\Services\\Service$i::class);";
        $binds[] = "        \$this->app->alias('service.$i', \\App\\Contracts\\ServiceContract$i::class);";
    }
    $e = ($p % EVENTS) + 1;
    put("src/Providers/Provider$p.php", "namespace App\\Providers;\n\nclass Provider$p extends \\Mini\\ServiceProvider\n{\n    public function register(): void\n    {\n" . implode("\n", $binds) .
        "\n    }\n\n    public function boot(): void\n    {\n        \$events = \$this->app->make(\\Mini\\Events::class);\n        \$events->listen(\\App\\Events\\Event$e::class, \\App\\Listeners\\Listener" . (2 * $p - 1) . "::class);\n        \$events->listen(\\App\\Events\\Event$e::class, \\App\\Listeners\\Listener" . (2 * $p) . "::class);\n    }\n}\n");
    $providers[] = "App\\Providers\\Provider$p::class";
}

put('src/Models/Model.php', <<<'PHP'
namespace App\Models;

abstract class Model implements \JsonSerializable
{
    protected array $attributes = [];
    protected array $casts = [];

    public function __construct(array $attributes = [])
    {
        foreach ($attributes as $k => $v) {
            $this->attributes[$k] = $this->cast($k, $v);
        }
    }

    private function cast(string $k, $v)
    {
        return match ($this->casts[$k] ?? null) {
            'int' => (int) $v,
            'bool' => (bool) $v,
            'date' => new \DateTimeImmutable($v),
            'json' => json_decode($v, true),
            default => $v,
        };
    }

    public function __get(string $k)
    {
        $accessor = 'get' . str_replace('_', '', ucwords($k, '_')) . 'Attribute';
        return method_exists($this, $accessor) ? $this->$accessor() : ($this->attributes[$k] ?? null);
    }

    public function toArray(): array
    {
        return array_map(fn ($v) => $v instanceof \DateTimeInterface ? $v->format(DATE_ATOM) : $v, $this->attributes);
    }

    public function jsonSerialize(): array
    {
        return $this->toArray();
    }

    public static function hydrate(array $rows): array
    {
        return array_map(fn ($r) => new static($r), $rows);
    }
}
PHP);
for ($m = 1; $m <= MODELS; $m++) {
    put("src/Models/Model$m.php", "namespace App\\Models;\n\nclass Model$m extends Model\n{\n    protected array \$casts = ['id' => 'int', 'published' => 'bool', 'created_at' => 'date', 'meta' => 'json'];\n\n" .
        "    public function getTitleUpperAttribute(): string\n    {\n        return strtoupper(\$this->attributes['title'] ?? '') . ' #$m';\n    }\n}\n");
}

for ($w = 1; $w <= MIDDLEWARE; $w++) {
    put("src/Http/Middleware/Middleware$w.php", "namespace App\\Http\\Middleware;\n\nuse Mini\\Request;\nuse Mini\\Response;\n\nclass Middleware$w\n{\n    public function __construct(private \\App\\Contracts\\ServiceContract" . (100 + $w) . " \$service)\n    {\n    }\n\n" .
        "    public function handle(Request \$req, \\Closure \$next): Response\n    {\n        \$req->attributes['mw$w'] = \$this->service->compute(['path' => \$req->path]);\n        \$res = \$next(\$req);\n        \$res->headers['X-Mw$w'] = (string) strlen(\$res->body);\n        return \$res;\n    }\n}\n");
}

for ($e = 1; $e <= EVENTS; $e++) {
    put("src/Events/Event$e.php", "namespace App\\Events;\n\nclass Event$e\n{\n    public function __construct(public array \$payload = [])\n    {\n    }\n}\n");
}
for ($l = 1; $l <= 2 * PROVIDERS; $l++) {
    put("src/Listeners/Listener$l.php", "namespace App\\Listeners;\n\nclass Listener$l\n{\n    public array \$seen = [];\n\n    public function handle(object \$event): void\n    {\n        \$this->seen[] = json_encode(\$event->payload);\n    }\n}\n");
}

// Controllers: each needs a share of the services, as real controllers pull
// in repositories, policies, formatters and so on.
$controllers = ['Home' => [1, 40], 'Post' => [30, 80], 'User' => [60, 100], 'Api' => [70, 110], 'Search' => [90, 120]];
foreach ($controllers as $name => [$from, $to]) {
    $params = [];
    for ($i = $from; $i <= $to; $i += 2) {
        $params[] = "private \\App\\Contracts\\ServiceContract$i \$s$i";
    }
    $calls = '';
    for ($i = $from; $i <= $to; $i += 8) {
        $calls .= "        \$data = \$this->s{$i}->compute(\$data);\n";
    }
    put("src/Http/Controllers/{$name}Controller.php", "namespace App\\Http\\Controllers;\n\nuse Mini\\Request;\nuse Mini\\Response;\nuse Mini\\View;\n\nclass {$name}Controller extends Controller\n{\n    public function __construct(\n        " . implode(",\n        ", $params) . ",\n    ) {\n    }\n\n" .
        "    protected function work(array \$data): array\n    {\n$calls        return \$data;\n    }\n}\n");
}
put('src/Http/Controllers/Controller.php', <<<'PHP'
namespace App\Http\Controllers;

use Mini\Events;
use Mini\Request;
use Mini\Response;
use Mini\Router;
use Mini\View;

abstract class Controller
{
    abstract protected function work(array $data): array;

    /** Rows as a query builder would return them, hydrated into models. */
    protected function rows(int $n, int $seed, string $model = 'Model1'): array
    {
        $rows = [];
        mt_srand($seed);
        for ($i = 1; $i <= $n; $i++) {
            $rows[] = [
                'id' => (string) ($seed * 100 + $i),
                'title' => "Post $i of page $seed: " . str_repeat('lorem ipsum ', mt_rand(2, 6)),
                'body' => str_repeat('Dolor sit amet, consectetur adipiscing elit. ', mt_rand(10, 40)),
                'published' => (string) ($i % 3 !== 0),
                'created_at' => date('Y-m-d H:i:s', 1700000000 + $i * 3600),
                'meta' => json_encode(['tags' => ['a', 'b', "t$i"], 'views' => $i * 7]),
            ];
        }
        $class = 'App\\Models\\' . $model;
        return $class::hydrate($rows);
    }

    public function index(Request $req, View $view, Events $events): string
    {
        $events->dispatch(new \App\Events\Event1(['path' => $req->path]));
        $posts = $this->rows(20, 1, 'Model' . (1 + crc32(static::class) % 40));
        return $view->render('posts.index', ['posts' => $posts, 'extra' => $this->work(['a' => 'x', 'b' => 'y']), 'title' => 'Home']);
    }

    public function show(Request $req, View $view, Events $events, Router $router, string $id): string
    {
        $events->dispatch(new \App\Events\Event2(['id' => $id]));
        $post = $this->rows(1, (int) $id, 'Model' . (1 + (int) $id % 40))[0];
        $comments = $this->rows(15, (int) $id + 1000, 'Model' . (1 + ((int) $id + 7) % 40));
        return $view->render('posts.show', ['post' => $post, 'comments' => $comments, 'back' => $router->url('home'),
            'extra' => $this->work(['id' => $id]), 'title' => $post->title_upper]);
    }

    public function api(Request $req, Events $events): Response
    {
        $events->dispatch(new \App\Events\Event3(['api' => true]));
        $page = max(1, (int) $req->input('page', 1));
        return Response::json(['data' => $this->rows(25, $page, 'Model' . (1 + $page % 40)), 'extra' => $this->work(['page' => (string) $page])]);
    }

    public function search(Request $req, View $view): string
    {
        $q = (string) $req->input('q', '');
        $posts = array_values(array_filter($this->rows(40, 5, 'Model5'), fn ($p) => $q === '' || str_contains($p->title, $q)));
        return $view->render('posts.index', ['posts' => $posts, 'extra' => $this->work(['q' => $q]), 'title' => "Search: $q"]);
    }
}
PHP);

$mw = [];
for ($w = 1; $w <= MIDDLEWARE; $w++) {
    $mw[] = "App\\Http\\Middleware\\Middleware$w::class";
}
put('config/app.php', "return [\n    'name' => 'Laravel-shaped',\n    'providers' => [\n        " . implode(",\n        ", $providers) . ",\n    ],\n    'middleware' => [" . implode(', ', array_slice($mw, 0, 4)) . "],\n    'route_middleware' => [" . implode(', ', array_slice($mw, 4)) . "],\n];\n");
foreach (['auth', 'cache', 'database', 'filesystems', 'logging', 'mail', 'queue', 'session', 'services', 'view'] as $c) {
    $items = [];
    for ($k = 1; $k <= 25; $k++) {
        $items[] = "    '{$c}_$k' => ['driver' => '$c', 'value' => $k, 'enabled' => " . ($k % 2 ? 'true' : 'false') . ']';
    }
    put("config/$c.php", "return [\n" . implode(",\n", $items) . ",\n];\n");
}
put('routes/web.php', <<<'PHP'
use App\Http\Controllers as C;

return function (Mini\Router $r) {
    $web = ['App\Http\Middleware\Middleware5', 'App\Http\Middleware\Middleware6', 'App\Http\Middleware\Middleware7'];
    $r->group(['middleware' => $web], function (Mini\Router $r) {
        $r->get('/', [C\HomeController::class, 'index'], 'home');
        for ($i = 1; $i <= 40; $i++) {
            $r->get("/section$i/{id}", [C\PostController::class, 'show'], "section$i");
        }
        $r->get('/posts/{id}', [C\PostController::class, 'show'], 'posts.show');
        $r->get('/users/{id}', [C\UserController::class, 'show'], 'users.show');
        $r->get('/search', [C\SearchController::class, 'search'], 'search');
    });
    $r->group(['prefix' => '/api', 'middleware' => ['App\Http\Middleware\Middleware8']], function (Mini\Router $r) {
        $r->get('/posts', [C\ApiController::class, 'api'], 'api.posts');
    });
};
PHP);
@mkdir("$dest/storage/views", 0755, true);
