<article id="post-{{ $post->id }}">
<h2><a href="/posts/{{ $post->id }}">{{ $post->title_upper }}</a></h2>
<time>{{ $post->created_at->format('j F Y') }}</time>
@if ($post->published)
<p>{{ substr($post->body, 0, 200) }}…</p>
@else
<p><em>draft</em></p>
@endif
<ul>
@foreach ($post->meta['tags'] as $tag)
<li>{{ $tag }}</li>
@endforeach
</ul>
</article>
