using System.Text.Json.Serialization;
using Microsoft.AspNetCore.Http;

namespace AutoPrune.AspNetCore;

/// <summary>An OpenAI-style error body: <c>{"error": {"message", "type", "param", "code"}}</c>.</summary>
internal sealed record OpenAIErrorBody([property: JsonPropertyName("error")] OpenAIErrorDetail Error);

internal sealed record OpenAIErrorDetail(
    [property: JsonPropertyName("message")] string Message,
    [property: JsonPropertyName("type")] string Type,
    [property: JsonPropertyName("param")] string? Param,
    [property: JsonPropertyName("code")] string? Code);

/// <summary>A request the server refuses, with its status code and the OpenAI error it answers.</summary>
internal sealed class OpenAIException(int status, string message, string? param = null, string? code = null, string? type = null, Exception? inner = null)
    : Exception(message, inner)
{
    public int Status { get; } = status;
    public string? Param { get; } = param;
    public string? Code { get; } = code;
    public string Type { get; } = type ?? TypeOf(status);

    public OpenAIErrorBody Body => new(new OpenAIErrorDetail(Message, Type, Param, Code));

    public static OpenAIException BadRequest(string message, string? param = null, string code = "invalid_request") =>
        new(StatusCodes.Status400BadRequest, message, param, code);

    private static string TypeOf(int status) => status switch
    {
        StatusCodes.Status401Unauthorized => "authentication_error",
        StatusCodes.Status403Forbidden => "permission_error",
        StatusCodes.Status404NotFound => "not_found_error",
        StatusCodes.Status429TooManyRequests => "rate_limit_error",
        >= 500 => "server_error",
        _ => "invalid_request_error",
    };
}

/// <summary>Writes OpenAI-style errors.</summary>
internal static class OpenAIErrors
{
    public static Task WriteAsync(HttpContext context, OpenAIException error)
    {
        context.Response.StatusCode = error.Status;
        return context.Response.WriteAsJsonAsync(error.Body, OpenAIJson.Writer.OpenAIErrorBody, contentType: "application/json", context.RequestAborted);
    }

    public static IResult Result(OpenAIException error) => Results.Json(error.Body, OpenAIJson.Writer.OpenAIErrorBody, statusCode: error.Status);
}
