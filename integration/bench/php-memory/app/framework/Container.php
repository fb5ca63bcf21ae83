<?php
// A service container as Laravel's: bindings, singletons, and autowiring by
// reflection of constructor (and controller method) parameter types.
namespace Mini;

class Container
{
    private array $bindings = [];
    private array $instances = [];
    private array $aliases = [];
    private array $resolving = [];

    public function bind(string $id, $concrete = null, bool $shared = false): void
    {
        $this->bindings[$id] = [$concrete ?? $id, $shared];
    }

    public function singleton(string $id, $concrete = null): void
    {
        $this->bind($id, $concrete, true);
    }

    public function alias(string $alias, string $id): void
    {
        $this->aliases[$alias] = $id;
    }

    public function instance(string $id, object $o): void
    {
        $this->instances[$id] = $o;
    }

    public function has(string $id): bool
    {
        return isset($this->bindings[$id]) || isset($this->instances[$id]) || isset($this->aliases[$id]);
    }

    public function make(string $id, array $params = [])
    {
        $id = $this->aliases[$id] ?? $id;
        if (isset($this->instances[$id])) {
            return $this->instances[$id];
        }
        [$concrete, $shared] = $this->bindings[$id] ?? [$id, false];
        if (isset($this->resolving[$id])) {
            throw new \LogicException("circular dependency on $id");
        }
        $this->resolving[$id] = true;
        try {
            $o = $concrete instanceof \Closure ? $concrete($this, $params) : $this->build($concrete, $params);
        } finally {
            unset($this->resolving[$id]);
        }
        if ($shared) {
            $this->instances[$id] = $o;
        }
        return $o;
    }

    private function build(string $class, array $params)
    {
        $r = new \ReflectionClass($class);
        $ctor = $r->getConstructor();
        if ($ctor === null) {
            return new $class();
        }
        return $r->newInstanceArgs($this->arguments($ctor, $params));
    }

    public function call(array $callable, array $params = [])
    {
        [$o, $method] = $callable;
        $m = new \ReflectionMethod($o, $method);
        return $m->invokeArgs($o, $this->arguments($m, $params));
    }

    private function arguments(\ReflectionFunctionAbstract $f, array $params): array
    {
        $args = [];
        foreach ($f->getParameters() as $p) {
            $name = $p->getName();
            $type = $p->getType();
            if (array_key_exists($name, $params)) {
                $args[] = $params[$name];
            } elseif ($type instanceof \ReflectionNamedType && !$type->isBuiltin()) {
                $args[] = $this->make($type->getName());
            } elseif ($p->isDefaultValueAvailable()) {
                $args[] = $p->getDefaultValue();
            } else {
                throw new \LogicException("cannot resolve \$$name of " . $f->getName());
            }
        }
        return $args;
    }
}
