<?php
// polyhost demo: a PHP page served by this site's own php-fpm pool.
$user = function_exists('posix_getpwuid') ? posix_getpwuid(posix_geteuid())['name'] : get_current_user();
?><!doctype html>
<title>polyhost demo: PHP</title>
<h1>polyhost PHP demo</h1>
<p>Served by php-fpm <?= htmlspecialchars(PHP_VERSION) ?> as user <?= htmlspecialchars($user) ?>, pid <?= getmypid() ?>.</p>
<p>REQUEST_URI=<?= htmlspecialchars($_SERVER['REQUEST_URI']) ?> SCRIPT_NAME=<?= htmlspecialchars($_SERVER['SCRIPT_NAME']) ?></p>
<p><a href="/about">A pretty URL through the front controller</a> · <a href="/hello.txt">a static file</a></p>
