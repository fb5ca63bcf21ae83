<?php
// Templates as Blade's: compiled once to PHP files in a cache directory
// (checked by mtime on every request), then included with the data
// extracted; {{ }} escapes, @foreach/@if/@include/@extends/@section/@yield.
namespace Mini;

class View
{
    private array $sections = [];

    public function __construct(private string $dir, private string $cache, private array $shared = [])
    {
    }

    public function share(string $k, $v): void
    {
        $this->shared[$k] = $v;
    }

    public function render(string $name, array $data = []): string
    {
        $this->sections = [];
        $out = $this->renderFile($name, $data);
        while (isset($this->sections['__extends'])) {
            $parent = $this->sections['__extends'];
            unset($this->sections['__extends']);
            $out = $this->renderFile($parent, $data);
        }
        return $out;
    }

    public function renderFile(string $name, array $data): string
    {
        $src = $this->dir . '/' . str_replace('.', '/', $name) . '.tpl';
        $compiled = $this->cache . '/' . sha1($src) . '.php';
        if (!is_file($compiled) || filemtime($compiled) < filemtime($src)) {
            $tmp = $compiled . '.' . getmypid();
            file_put_contents($tmp, $this->compile(file_get_contents($src)));
            rename($tmp, $compiled);
        }
        $__view = $this;
        extract($this->shared + $data, EXTR_SKIP);
        ob_start();
        include $compiled;
        return ob_get_clean();
    }

    public function startSection(string $name): void
    {
        $this->sections['__current'][] = $name;
        ob_start();
    }

    public function stopSection(): void
    {
        $name = array_pop($this->sections['__current']);
        $this->sections[$name] = ob_get_clean();
    }

    public function extend(string $name): void
    {
        $this->sections['__extends'] = $name;
    }

    public function yieldSection(string $name): string
    {
        return $this->sections[$name] ?? '';
    }

    private function compile(string $t): string
    {
        $rules = [
            '/\{\{\s*(.+?)\s*\}\}/s' => '<?= htmlspecialchars((string) ($1), ENT_QUOTES) ?>',
            '/\{!!\s*(.+?)\s*!!\}/s' => '<?= $1 ?>',
            '/@foreach\s*\((.+?)\)\s*$/m' => '<?php foreach ($1): ?>',
            '/@endforeach/' => '<?php endforeach; ?>',
            '/@if\s*\((.+?)\)\s*$/m' => '<?php if ($1): ?>',
            '/@else\b/' => '<?php else: ?>',
            '/@endif/' => '<?php endif; ?>',
            '/@extends\(\'(.+?)\'\)/' => '<?php $__view->extend(\'$1\'); ?>',
            '/@section\(\'(.+?)\'\)/' => '<?php $__view->startSection(\'$1\'); ?>',
            '/@endsection/' => '<?php $__view->stopSection(); ?>',
            '/@yield\(\'(.+?)\'\)/' => '<?= $__view->yieldSection(\'$1\') ?>',
            '/@include\(\'(.+?)\'\)/' => '<?= $__view->renderFile(\'$1\', get_defined_vars()) ?>',
        ];
        return preg_replace(array_keys($rules), array_values($rules), $t);
    }
}
