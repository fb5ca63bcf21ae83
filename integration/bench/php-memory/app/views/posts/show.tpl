@extends('layouts.app')
@section('content')
<article><h1>{{ $post->title_upper }}</h1>
{!! nl2br(htmlspecialchars($post->body)) !!}
</article>
<section><h2>{{ count($comments) }} comments</h2>
@foreach ($comments as $post)
@include('posts.card')
@endforeach
</section>
<a href="{{ $back }}">back</a>
@endsection
