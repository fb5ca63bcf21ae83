<?php
// Front controller of a Laravel-shaped application (see ../../README.md):
// every request autoloads its classes, builds a container, boots service
// providers, routes, runs middleware and renders a template.
$base = dirname(__DIR__);

spl_autoload_register(function (string $class) use ($base) {
    static $framework = [
        'Mini\\Container' => 'Container', 'Mini\\Request' => 'Http', 'Mini\\Response' => 'Http',
        'Mini\\Route' => 'Router', 'Mini\\Router' => 'Router', 'Mini\\Pipeline' => 'Router',
        'Mini\\View' => 'View', 'Mini\\Config' => 'Kernel', 'Mini\\Events' => 'Kernel',
        'Mini\\ServiceProvider' => 'Kernel', 'Mini\\Kernel' => 'Kernel',
    ];
    if (isset($framework[$class])) {
        require_once $base . '/framework/' . $framework[$class] . '.php';
        return;
    }
    // PSR-4, as Composer's ClassLoader: App\Foo\Bar => src/Foo/Bar.php.
    if (str_starts_with($class, 'App\\')) {
        $file = $base . '/src/' . str_replace('\\', '/', substr($class, 4)) . '.php';
        if (is_file($file)) {
            require $file;
        }
    }
});

require $base . '/count.php'; // the benchmark's request counter (../../count.php)

$app = new Mini\Container();
$kernel = new Mini\Kernel($app, $base);
$kernel->bootstrap();
$kernel->handle(Mini\Request::capture())->send();
