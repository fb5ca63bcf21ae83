@extends('layouts.app')
@section('content')
<h1>{{ $title }}</h1>
@foreach ($posts as $post)
@include('posts.card')
@endforeach
@endsection
