<?php
// Installs WordPress into the copy at ABSPATH (argv[1]) whose wp-config.php
// run.sh wrote: the site, 40 posts with 3-8 comments each, a few categories
// and tags, 5 pages, pretty permalinks (/%postname%/), the default theme
// (Twenty Twenty-Three, Debian's wordpress-theme-twentytwentythree).
//   php wp-setup.php WP_DIR HOST
[$_, $dir, $host] = $argv + [null, null, null];
if ($dir === null || $host === null) {
    exit("usage: php wp-setup.php WP_DIR HOST\n");
}
$_SERVER['HTTP_HOST'] = $host;
$_SERVER['REQUEST_URI'] = '/';
$_SERVER['SERVER_PROTOCOL'] = 'HTTP/1.1';
define('WP_INSTALLING', true);
// No mail from the install (there is no MTA here): WordPress takes a
// pluggable function defined before it loads.
function wp_mail(...$args)
{
    return true;
}
require $dir . '/wp-load.php';
require_once ABSPATH . 'wp-admin/includes/upgrade.php';

$r = wp_install('polyhost bench', 'admin', 'admin@example.invalid', true, '', 'bench-password-not-secret');
update_option('siteurl', "http://$host");
update_option('home', "http://$host");
update_option('permalink_structure', '/%postname%/');
update_option('posts_per_page', 10);

mt_srand(19);
$words = explode(' ', 'lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt ut labore et dolore magna aliqua enim minim veniam quis nostrud exercitation ullamco laboris nisi aliquip commodo consequat');
$sentence = function (int $n) use ($words) {
    $s = [];
    for ($i = 0; $i < $n; $i++) {
        $s[] = $words[mt_rand(0, count($words) - 1)];
    }
    return ucfirst(implode(' ', $s)) . '.';
};
$cats = [];
foreach (['News', 'Guides', 'Releases', 'Opinion'] as $c) {
    $cats[] = wp_insert_term($c, 'category')['term_id'];
}
for ($p = 1; $p <= 40; $p++) {
    $paras = [];
    for ($k = 0; $k < mt_rand(4, 10); $k++) {
        $paras[] = "<!-- wp:paragraph -->\n<p>" . $sentence(mt_rand(30, 80)) . "</p>\n<!-- /wp:paragraph -->";
    }
    $id = wp_insert_post([
        'post_title' => "Post $p: " . $sentence(mt_rand(3, 7)),
        'post_name' => "post-$p",
        'post_content' => implode("\n\n", $paras),
        'post_status' => 'publish',
        'post_date' => date('Y-m-d H:i:s', 1700000000 + $p * 86400),
        'post_category' => [$cats[$p % count($cats)]],
        'tags_input' => ['tag' . ($p % 7), 'tag' . ($p % 5 + 10)],
    ]);
    for ($c = 0; $c < mt_rand(3, 8); $c++) {
        wp_insert_comment([
            'comment_post_ID' => $id,
            'comment_author' => "Reader $c",
            'comment_author_email' => "reader$c@example.invalid",
            'comment_content' => $sentence(mt_rand(10, 40)),
            'comment_approved' => 1,
        ]);
    }
}
for ($p = 1; $p <= 5; $p++) {
    wp_insert_post([
        'post_type' => 'page',
        'post_title' => "Page $p",
        'post_name' => "page-$p",
        'post_content' => "<!-- wp:paragraph -->\n<p>" . $sentence(120) . "</p>\n<!-- /wp:paragraph -->",
        'post_status' => 'publish',
    ]);
}
flush_rewrite_rules();
echo "wp-setup: installed at http://$host/ (theme ", get_stylesheet(), ", ", wp_count_posts()->publish, " posts)\n";
