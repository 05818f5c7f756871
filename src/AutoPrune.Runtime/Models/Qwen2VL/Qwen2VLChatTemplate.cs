using System.Text;

namespace AutoPrune.Models.Qwen2VL;

/// <summary>What one part of a message's content is.</summary>
internal enum Qwen2VLPartKind { Text, Image, Video }

/// <summary>One part of a message's content: text, or the place of an image (or a video, refused for now).</summary>
internal readonly record struct Qwen2VLPart(Qwen2VLPartKind Kind, string? Text = null)
{
    public static Qwen2VLPart Image { get; } = new(Qwen2VLPartKind.Image);
    public static Qwen2VLPart OfText(string text) => new(Qwen2VLPartKind.Text, text ?? throw new ArgumentNullException(nameof(text)));
}

/// <summary>A chat message: role (<c>system</c>, <c>user</c>, <c>assistant</c>) and its content parts in order.</summary>
internal sealed record Qwen2VLMessage(string Role, IReadOnlyList<Qwen2VLPart> Content)
{
    public static Qwen2VLMessage User(params Qwen2VLPart[] parts) => new("user", parts);
    public static Qwen2VLMessage Assistant(string text) => new("assistant", [Qwen2VLPart.OfText(text)]);
    public static Qwen2VLMessage System(string text) => new("system", [Qwen2VLPart.OfText(text)]);
}

/// <summary>
/// Qwen2.5-VL's chat template (ChatML with vision markers), written out in code; it renders what the checkpoints'
/// Jinja <c>chat_template</c> renders:
/// <code>
/// &lt;|im_start|&gt;system\nYou are a helpful assistant.&lt;|im_end|&gt;\n      (unless the first message is a system message)
/// &lt;|im_start|&gt;{role}\n{content}&lt;|im_end|&gt;\n                    (each message)
/// &lt;|im_start|&gt;assistant\n                                          (the generation prompt)
/// </code>
/// Content parts render in their order: text as it is, each image as
/// <c>&lt;|vision_start|&gt;&lt;|image_pad|&gt;&lt;|vision_end|&gt;</c> (preceded by <c>Picture k: </c> with
/// <c>addVisionId</c>). The processor then expands each <c>&lt;|image_pad|&gt;</c> to grid_t·grid_h·grid_w / merge² pads
/// (<see cref="Qwen2Tokenizer.EncodePrompt"/>).
/// </summary>
internal static class Qwen2VLChatTemplate
{
    public const string DefaultSystem = "You are a helpful assistant.";
    public const string ImageMarkup = Qwen2Tokenizer.VisionStart + Qwen2Tokenizer.ImagePad + Qwen2Tokenizer.VisionEnd;

    /// <summary>The prompt text of a conversation.</summary>
    /// <exception cref="ArgumentException">An unknown role, or a system message that is not first.</exception>
    /// <exception cref="NotSupportedException">A video part (videos are not supported yet).</exception>
    public static string Render(IReadOnlyList<Qwen2VLMessage> messages, bool addGenerationPrompt = true, bool addVisionId = false)
    {
        ArgumentNullException.ThrowIfNull(messages);
        var sb = new StringBuilder();
        int images = 0;
        for (int i = 0; i < messages.Count; i++)
        {
            var m = messages[i] ?? throw new ArgumentException($"Message {i} is null.", nameof(messages));
            if (m.Role is not ("system" or "user" or "assistant"))
                throw new ArgumentException($"Message {i} has role '{m.Role}'; expected system, user or assistant.", nameof(messages));
            if (m.Role == "system" && i > 0)
                throw new ArgumentException($"Message {i} is a system message; only the first message may be one.", nameof(messages));
            if (i == 0 && m.Role != "system")
                sb.Append(Qwen2Tokenizer.ImStart).Append("system\n").Append(DefaultSystem).Append(Qwen2Tokenizer.ImEnd).Append('\n');
            sb.Append(Qwen2Tokenizer.ImStart).Append(m.Role).Append('\n');
            foreach (var part in m.Content)
            {
                switch (part.Kind)
                {
                    case Qwen2VLPartKind.Text:
                        sb.Append(part.Text);
                        break;
                    case Qwen2VLPartKind.Image:
                        images++;
                        if (addVisionId) sb.Append("Picture ").Append(images).Append(": ");
                        sb.Append(ImageMarkup);
                        break;
                    case Qwen2VLPartKind.Video:
                        throw new NotSupportedException($"Message {i} holds a video: video inputs are not supported yet for Qwen2.5-VL (only images).");
                }
            }
            sb.Append(Qwen2Tokenizer.ImEnd).Append('\n');
        }
        if (addGenerationPrompt) sb.Append(Qwen2Tokenizer.ImStart).Append("assistant\n");
        return sb.ToString();
    }

    /// <summary>
    /// The runtime's turns (<see cref="ConversationTurn"/>, an image's place marked by <see cref="Prompting.ImagePlaceholder"/>)
    /// as messages: each placeholder becomes an image part, and one line break right after it (the separator
    /// <see cref="VisionRequest.Create"/> writes between an image and the question) is dropped, since Qwen's template puts
    /// the question right after <c>&lt;|vision_end|&gt;</c>.
    /// </summary>
    public static IReadOnlyList<Qwen2VLMessage> FromTurns(IReadOnlyList<ConversationTurn> turns)
    {
        ArgumentNullException.ThrowIfNull(turns);
        var result = new List<Qwen2VLMessage>(turns.Count);
        foreach (var t in turns)
        {
            string role = t.Role switch { TurnRole.System => "system", TurnRole.User => "user", TurnRole.Assistant => "assistant", _ => throw new ArgumentException($"Unknown role {t.Role}.", nameof(turns)) };
            var parts = new List<Qwen2VLPart>();
            string text = t.Text ?? "";
            int pos = 0;
            while (true)
            {
                int at = text.IndexOf(Prompting.ImagePlaceholder, pos, StringComparison.Ordinal);
                string piece = text[pos..(at < 0 ? text.Length : at)];
                if (piece.Length > 0) parts.Add(Qwen2VLPart.OfText(piece));
                if (at < 0) break;
                parts.Add(Qwen2VLPart.Image);
                pos = at + Prompting.ImagePlaceholder.Length;
                if (pos < text.Length && text[pos] == '\n') pos++;
            }
            result.Add(new Qwen2VLMessage(role, parts));
        }
        return result;
    }
}
